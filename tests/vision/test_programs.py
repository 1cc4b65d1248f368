"""Images in programs: `lm.image` / `{{ image(x) }}` in user turns, the output view's
thumbnail, the radix cache across programs, and the remote path (`lmnb serve` taking
`image_url` parts from the official client and from `lm.OpenAI`)."""
from __future__ import annotations

import io

import numpy as np
import openai
import pytest

import lmnb as lm
from lmnb.errors import LmnbError
from tests.vision.conftest import random_images

NEW = 12


def _describe(s, img, question="What is in the picture?"):
    s += lm.user(lm.image(img) + "\n" + question)
    s += lm.assistant(lm.gen("answer", max_tokens=NEW, temperature=0, ignore_eos=True))


def _local_answer(rt, program_text_before_gen: str) -> str:
    # programs heal the prompt boundary by default, so the direct call asks for it too
    return rt.generate([program_text_before_gen], max_new_tokens=NEW, temperature=0,
                       ignore_eos=True, token_healing=True)[0]["text"]


def test_program_with_image_matches_direct_generate(llava_rt):
    img = random_images(1, seed=61)[0]
    st = lm.function(_describe).run(img, backend=llava_rt)
    (data,) = st.images.values()
    text, end = st.text(), lm.RuntimeBackend(llava_rt).chat_template().end("assistant")
    assert data.marker in text and text.endswith(st["answer"] + end)
    before = text[: len(text) - len(st["answer"] + end)]
    assert st["answer"] == _local_answer(llava_rt, before)
    llava_rt.check_integrity()


def test_same_image_in_a_later_program_computes_no_image_tokens(llava_rt):
    img = random_images(1, seed=62)[0]
    llava_rt.flush_cache()
    first = lm.function(_describe).run(img, backend=llava_rt)
    mid = llava_rt.stats()
    png = io.BytesIO()
    img.save(png, format="PNG")   # the same image again, as bytes this time
    second = lm.function(_describe).run(png.getvalue(), "Describe the colours.", backend=llava_rt)
    after = llava_rt.stats()
    assert mid["image_tokens_computed"] > 0
    assert after["image_tokens_computed"] == mid["image_tokens_computed"]
    assert after["images_encoded"] == mid["images_encoded"]
    assert second.get_meta_info("answer")["cached_tokens"] >= 16
    assert first["answer"] and second["answer"]
    llava_rt.check_integrity()


def test_select_and_fork_after_an_image(llava_rt):
    img = random_images(1, seed=63)[0]

    @lm.function
    def prog(s):
        s += lm.user(lm.image(img) + " Is it a cat or a dog?")
        s += lm.assistant_begin()
        s += lm.select("kind", ["cat", "dog", "bird"])
        forks = s.fork(2)
        forks += lm.gen("more", max_tokens=4, temperature=0, ignore_eos=True)
        forks.join()
        s += lm.assistant_end()

    st = prog.run(backend=llava_rt)
    assert st["kind"] in ("cat", "dog", "bird")
    assert len(st["more"]) == 2 and st["more"][0] == st["more"][1]
    llava_rt.check_integrity()


def test_image_outside_a_user_turn_fails(llava_rt):
    img = random_images(1)[0]
    with pytest.raises(LmnbError, match="user turn"):
        lm.run_program([lm.assistant(lm.image(img) + lm.gen("x", max_tokens=2))], backend=llava_rt)


def test_bad_image_values():
    with pytest.raises(LmnbError, match="image file not found"):
        lm.image("/nonexistent/cat.png")
    with pytest.raises(LmnbError, match="shape"):
        lm.image(np.zeros((4, 4, 7), dtype=np.uint8))
    with pytest.raises(LmnbError, match=r"\[0, 1\]"):
        lm.image(np.full((4, 4, 3), 2.0))
    with pytest.raises(LmnbError, match="give a path"):
        lm.image(42)
    a = lm.image(np.zeros((4, 5, 3), dtype=np.uint8))
    b = lm.image(np.zeros((4, 5), dtype=np.float32))
    assert a.data.key == b.data.key   # same pixels: same content hash


def test_text_only_model_refuses_images(smollm2):
    with pytest.raises(LmnbError, match="text-only"):
        lm.run_program([lm.user(lm.image(random_images(1)[0])), lm.assistant(lm.gen("x", max_tokens=2))],
                       backend=smollm2)


def test_cell_with_image_shows_a_thumbnail(llava_rt):
    from lmnb.widgets.output_view import OutputView

    photo = random_images(1, seed=64)[0]
    cell = ("@user\n{{ image(photo) }}\nWhat is this?\n@assistant\n"
            "{{ gen('answer', max_tokens=6, temperature=0) }}\n")
    st = lm.run_template(cell, {"photo": photo}, backend=llava_rt)
    assert st["answer"] is not None
    view = OutputView(st)
    html = view.html()
    assert '<img src="data:image/png;base64,' in html and "max-height: 64px" in html
    assert "[image 50x40]" in view.text()
    llava_rt.check_integrity()


# -- remote -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llava_server(llava_rt):
    from lmnb.server import start_server

    with start_server(llava_rt, model_name="llava-tiny") as handle:
        yield handle


def _data_url(img) -> str:
    return lm.image(img).data.data_url()


def test_server_takes_image_url_parts(llava_server, llava_rt):
    img = random_images(1, seed=65)[0]
    client = openai.OpenAI(base_url=llava_server.url, api_key="unused", max_retries=0, timeout=60)
    resp = client.chat.completions.create(
        model="llava-tiny", max_tokens=NEW, temperature=0, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": _data_url(img)}},
            {"type": "text", "text": "\nWhat is in the picture?"}]}])
    data = lm.image(img).data
    text = llava_rt.tokenizer.apply_chat_template(
        [{"role": "user", "content": data.marker + "\nWhat is in the picture?"}],
        add_generation_prompt=True, tokenize=False)
    ids = llava_rt.images.encode(text, add_special_tokens=False)
    local = llava_rt.generate([ids], max_new_tokens=NEW, temperature=0, ignore_eos=True)[0]
    assert resp.choices[0].message.content == local["text"]
    assert resp.usage.prompt_tokens == len(ids)
    with pytest.raises(openai.BadRequestError, match="data URL"):
        client.chat.completions.create(model="llava-tiny", max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]}])
    llava_rt.check_integrity()


def test_text_only_server_refuses_image_url(smollm2):
    from lmnb.server import start_server

    with start_server(smollm2) as handle:
        client = openai.OpenAI(base_url=handle.url, api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError, match="text-only") as e:
            client.chat.completions.create(model="smollm2", max_tokens=2, messages=[
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": _data_url(random_images(1)[0])}}]}])
        assert "\n" not in str(e.value.body.get("message", ""))


def test_openai_backend_sends_images(llava_server, llava_rt):
    """A program on lm.OpenAI against the server gives the same answer as on the runtime."""
    img = random_images(1, seed=66)[0]
    remote = lm.OpenAI("llava-tiny", base_url=llava_server.url, api_key="unused", is_chat_model=True)
    st = lm.function(_describe).run(img, backend=remote)
    want = llava_rt.tokenizer.apply_chat_template(
        [{"role": "user", "content": lm.image(img).data.marker + "\nWhat is in the picture?"}],
        add_generation_prompt=True, tokenize=False)
    ids = llava_rt.images.encode(want, add_special_tokens=False)
    local = llava_rt.generate([ids], max_new_tokens=NEW, temperature=0, ignore_eos=True)[0]
    assert st["answer"] == local["text"]


def test_batch_of_programs_sharing_images(llava_rt):
    """Six programs over three images from many threads at once: each answer is the one
    the program gives alone, and each image is encoded once."""
    imgs = random_images(3, seed=67)
    items = [{"img": imgs[i % 3], "question": f"Question {i}: what is shown?"} for i in range(6)]
    alone = [lm.function(_describe).run(backend=llava_rt, **it)["answer"] for it in items[:3]]
    llava_rt.flush_cache()
    before = llava_rt.stats()
    states = lm.function(_describe).run_batch(items, backend=llava_rt, progress_bar=False)
    after = llava_rt.stats()
    assert [s.error for s in states] == [None] * 6
    assert [s["answer"] for s in states[:3]] == alone
    assert after["images_encoded"] - before["images_encoded"] == 3
    llava_rt.check_integrity()
