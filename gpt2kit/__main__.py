from gpt2kit.commands import main

if __name__ == "__main__":
    main()
