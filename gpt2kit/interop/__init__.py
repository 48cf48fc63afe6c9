"""Weights in and out of other libraries' layouts (Hugging Face GPT-2: :mod:`gpt2kit.interop.hf`)."""
