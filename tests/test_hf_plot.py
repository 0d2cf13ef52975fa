"""SoftTrace.plot: the per-step picture of soft thinking (matplotlib, PNG)."""

import pytest
import torch

import softkernels as sk
from _hf_models import make_model, prompts

pytest.importorskip("transformers")
matplotlib = pytest.importorskip("matplotlib")


def _trace(**kw):
    m = make_model("llama")
    ids, mask = prompts(batch=2)
    cfg = dict(k=6, temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, max_think_tokens=7)
    cfg.update(kw)
    sk.patch(m, sk.SoftThinkingConfig(**cfg))
    return m.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                      return_dict_in_generate=True).soft_trace


def test_plot_writes_a_png_with_threshold_end_and_weights(tmp_path):
    tr = _trace(cold_stop=sk.ColdStop(0.25, 3))
    assert tr.cold_stop_entropy == 0.25 and tr.cold_stop_patience == 3
    path = tmp_path / "row1.png"
    fig = tr.plot(1, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    top, heat = fig.axes[0], fig.axes[1]      # (fig.axes[2]: the twin axis of max_prob)
    # The Cold Stop threshold (horizontal) and the end of thinking (vertical, before step 7).
    ys = [tuple(line.get_ydata()) for line in top.lines]
    xs = [tuple(line.get_xdata()) for line in top.lines]
    assert (0.25, 0.25) in ys
    assert int(tr.end_step[1]) == 7 and (6.5, 6.5) in xs
    # The heat map shows the row's weights: [k, T] (slots by steps).
    img = heat.images[0].get_array()
    assert img.shape == (tr.k, tr.num_steps)
    assert torch.allclose(torch.as_tensor(img.data).T.float(), tr.weights[1].float())
    matplotlib.pyplot.close(fig)


def _word_tokenizer():
    """A real (tiny) Hugging Face tokenizer whose token i decodes to "w<i>"."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {f"w{i}": i for i in range(320)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0")


def test_plot_without_cold_stop_labels_the_leading_slots_with_tokens(tmp_path):
    tr = _trace()
    assert tr.cold_stop_entropy is None
    fig = tr.plot(0, tmp_path / "row0.png", tokenizer=_word_tokenizer(), title="x")
    labels = {t.get_text() for t in fig.axes[1].texts}
    top1 = {f"w{int(i)}"[:6] for i in tr.ids[0, :, 0]}
    assert labels and labels <= {f"w{i}"[:6] for i in range(320)} and labels & top1
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("row", [-1, 2, 1.0, True])
def test_plot_rejects_a_bad_row(row):
    tr = _trace()
    with pytest.raises(ValueError, match=r"SoftTrace.plot: row must be an int in \[0, 2\)"):
        tr.plot(row)
