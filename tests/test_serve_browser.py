"""The chat page in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Playwright's own browser download is not used: the test points it at the system Chromium, and skips
with the reason when there is none (``apt-get install chromium``). It opens the page, sends a message,
watches the streamed reply grow, sends a second turn, resets, and keeps a screenshot for the docs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'gpt2kit[test-serve]'")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs playwright: pip install 'gpt2kit[test-serve]'"
)

from gpt2kit.serve.engine_client import load_served_model  # noqa: E402
from gpt2kit.serve.testing import running_server  # noqa: E402

CHROMIUM = os.environ.get("GPT2KIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve-page.png"
"""The README's picture of the page: rewritten by this test only with GPT2KIT_UPDATE_SCREENSHOT=1."""

MODEL = 'tinychat <b id="injected">&'
"""A model id with markup in it: the page must show it as text (and send it back as the model)."""

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium: apt-get install chromium")


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    from test_serve_api import trained_chat_checkpoint

    ckpt = trained_chat_checkpoint(tmp_path_factory.mktemp("page") / "tinychat.ckpt")
    served = load_served_model(ckpt, max_batch=2, name=MODEL)
    with running_server(served) as url:
        yield url, served


def test_page_streams_a_reply_and_resets(page_server, tmp_path):
    url, served = page_server
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            page.set_default_timeout(20_000)
            lengths: list[int] = []  # how long the reply was each time the page changed it
            page.expose_function("recordLength", lambda n: lengths.append(n))
            page.goto(url + "/")
            assert page.title() == f"gpt2kit chat · {MODEL}"
            assert page.inner_text("#model") == MODEL and page.locator("#injected").count() == 0
            page.evaluate(
                """() => new MutationObserver(() => {
                     const r = document.querySelector('.msg.assistant');
                     if (r) window.recordLength(r.textContent.length);
                   }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true})"""
            )
            page.fill("#system", "")
            page.fill("#max_tokens", "40")
            page.eval_on_selector(
                "#temperature", "e => { e.value = '0'; e.dispatchEvent(new Event('input')); }"
            )
            page.fill("#input", "hello there")
            page.keyboard.press("Enter")
            page.wait_for_selector(".msg.assistant[data-state=done]")
            reply = page.inner_text(".msg.assistant")
            assert page.inner_text(".msg.user") == "hello there"
            # the reply is the API's greedy answer for the same conversation, and it arrived in pieces
            import openai

            api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", timeout=30, max_retries=0)
            expected = api.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hello there"}],
                max_tokens=40,
                temperature=0,
                top_p=0.9,
            )
            assert reply == expected.choices[0].message.content
            assert len(reply) > 5  # the model was trained to say a sentence
            assert len({n for n in lengths if 0 < n < len(reply)}) > 1, (
                lengths
            )  # streamed: it grew piece by piece
            assert page.inner_text(".meta").startswith("finish: ")
            # more turns than the 96-token context holds: the oldest are dropped, as in the chat REPL
            for turn, text in enumerate(["and then?", "hello there", "and then?"], start=2):
                page.fill("#input", text)
                page.click("#send")
                page.wait_for_function(
                    f"document.querySelectorAll('.msg.assistant[data-state=done]').length == {turn}"
                )
            assert page.locator(".msg.error").count() == 0
            from gpt2kit.chat.template import ChatEncoder, Message

            said = page.locator(".msg").all_inner_texts()
            enc = ChatEncoder(served.template, served.tokenizer)
            turns = enc.encode([Message(r, t) for r, t in zip(["user", "assistant"] * 4, said, strict=True)])
            assert sum(len(t.ids) for t in turns) > served.engine.block_size  # the whole would not fit
            shot = SCREENSHOT if os.environ.get("GPT2KIT_UPDATE_SCREENSHOT") == "1" else tmp_path / "page.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000  # a real picture of the page, not an empty one
            page.click("#reset")
            assert page.locator(".msg").count() == 0
            assert served.engine.snapshot().active == 0
        finally:
            browser.close()
