"""SFT batching and per-worker loop on CPU: packing keeps sequences apart, the loss is invariant to
packing and accumulation, training learns, and a resumed run equals an uninterrupted one."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from genrec.config import Lora, SFTConfig

from genrec.config_loader import ConfigError
from genrec.train import sft
from genrec.train.batching import (
    IGNORE_INDEX,
    TokenRows,
    collate,
    load_token_rows,
    pack_rows,
    plan_micro_batches,
    usable_rows,
)
from genrec.train.sft import STATE_FILE, load_state, save_state, token_losses, train_loop

VOCAB = 64
SEP = 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices gain nothing from threads, and on a shared CPU a thread that waits for a busy
    core stalls every op (a 0.3 s run took 16 s with two threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(seed: int = 0, dropout: float = 0.0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, attention_dropout=dropout,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def random_rows(n: int, seed: int = 0, prompt=(3, 20), response=(1, 8)) -> TokenRows:
    """Random prompts with labels -100, then a random response that is the loss target."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for _ in range(n):
        p, r = rng.integers(*prompt), rng.integers(*response)
        x = rng.integers(3, VOCAB, p + r).tolist()
        ids.append(x)
        labels.append([IGNORE_INDEX] * p + x[p:])
    return TokenRows.from_lists(ids, labels)


def copy_rows(n: int, seed: int = 0, k: int = 4) -> TokenRows:
    """A learnable toy: k tokens, a separator, the same k tokens again as the response."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for _ in range(n):
        x = rng.integers(3, 3 + 12, k).tolist()
        ids.append(x + [SEP] + x)
        labels.append([IGNORE_INDEX] * (k + 1) + x)
    return TokenRows.from_lists(ids, labels)


def cfg(**overrides) -> SFTConfig:
    base = dict(max_len=48, micro_batch_tokens=4 * 48, lr=3e-3, warmup_steps=0, log_every=1, eval_every=0,
                save_every=0, weight_decay=0.0, seed=0)
    return SFTConfig(**{**base, **overrides})


def reference_losses(model, rows: TokenRows, order: list[int]) -> torch.Tensor:
    """Per-target-token losses the usual way: each sequence alone, labels shifted by the model's convention."""
    out = []
    for i in order:
        a, b = rows.offsets[i], rows.offsets[i + 1]
        logits = model(input_ids=torch.from_numpy(rows.ids[a:b]).long()[None]).logits[0]
        labels = torch.from_numpy(rows.labels[a + 1:b]).long()
        losses = F.cross_entropy(logits[:-1], labels, reduction="none", ignore_index=IGNORE_INDEX)
        out.append(losses[labels != IGNORE_INDEX])
    return torch.cat(out)


@pytest.mark.parametrize("selects_logits", [True, False], ids=["logits_at_targets", "all_logits"])
def test_packed_loss_equals_each_sequence_alone_on_cpu(selects_logits, monkeypatch):
    monkeypatch.setattr(sft, "SELECTS_LOGITS", selects_logits and sft.SELECTS_LOGITS)
    model = tiny_model().eval()
    rows = random_rows(12)
    layout = pack_rows(rows.lengths, np.arange(len(rows)), width=48)
    assert max(len(row) for row in layout) > 2, "the test needs rows holding several sequences"
    batch = collate(rows, layout, width=48)
    with torch.no_grad():
        packed = token_losses(model, batch)
        alone = reference_losses(model, rows, [i for row in layout for i in row])
        torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)
        # The check has teeth: positions that do not restart let sequences see their neighbours.
        batch.position_ids[:] = torch.arange(48)
        assert (token_losses(model, batch) - alone).abs().max() > 1e-2


def test_padded_and_length_grouped_batches_equal_each_sequence_alone_on_cpu():
    model = tiny_model().eval()
    rows = random_rows(10, seed=1)
    for batching in ("padded", "length_grouped"):
        layouts = plan_micro_batches(batching, rows.lengths, np.arange(10), 48, 4 * 48, rng=np.random.default_rng(0))
        for layout in layouts:
            with torch.no_grad():
                got = token_losses(model, collate(rows, layout))
                torch.testing.assert_close(got, reference_losses(model, rows, [r[0] for r in layout]), rtol=0, atol=1e-5)


def test_packing_fills_rows_with_real_tokens_on_cpu():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 300, 3000)
    rows = TokenRows.from_lists([[5] * n for n in lengths], [[IGNORE_INDEX] + [5] * (n - 1) for n in lengths])
    layouts = plan_micro_batches("packed", rows.lengths, np.arange(len(rows)), 512, 8 * 512, rng)
    placed = sorted(i for layout in layouts for row in layout for i in row)
    assert placed == list(range(len(rows)))  # every sequence exactly once
    batches = [collate(rows, layout, 512) for layout in layouts]
    real = sum(b.real_tokens for b in batches) / sum(b.computed_tokens for b in batches)
    assert real >= 0.95, real
    assert all(b.input_ids.shape[1] == 512 for b in batches)


def test_usable_rows_counts_what_it_leaves_out_on_cpu():
    rows = TokenRows.from_lists(
        [[4] * 10, [4] * 60, [4] * 5, [4] * 3],
        [[IGNORE_INDEX] * 8 + [4] * 2, [4] * 60, [IGNORE_INDEX] * 5, [4, IGNORE_INDEX, IGNORE_INDEX]],
    )
    keep, skipped = usable_rows(rows, max_len=48)
    assert keep.tolist() == [0]
    # Row 3's only label sits on its first token, which nothing predicts.
    assert skipped == {"too_long": 1, "no_response": 2}


def test_token_rows_read_from_parquet_shards_on_cpu(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
    pq.write_table(pa.table({"input_ids": [[5, 6, 7]], "labels": [[-100, 6, 7]]}, schema=schema), tmp_path / "a.parquet")
    pq.write_table(pa.table({"input_ids": [[8, 9]], "labels": [[-100, 9]]}, schema=schema), tmp_path / "b.parquet")
    rows = load_token_rows(tmp_path)
    assert rows.lengths.tolist() == [3, 2]
    assert rows.ids.tolist() == [5, 6, 7, 8, 9] and rows.labels.tolist() == [-100, 6, 7, -100, 9]


def test_loss_decreases_on_copy_task_on_cpu():
    model = tiny_model()
    result = train_loop(cfg(max_steps=40, log_every=10), model, copy_rows(256), copy_rows(32, seed=1))
    losses = [m["loss"] for m in result["history"] if "loss" in m]
    assert losses[-1] < 0.6 * losses[0], losses
    assert result["valid_loss"] < 0.8 * losses[0]
    assert all(m["real_fraction"] > 0.9 for m in result["history"] if "real_fraction" in m)


def test_resumed_run_equals_uninterrupted_run_on_cpu(tmp_path):
    rows = random_rows(40, seed=2)  # a few steps per epoch, so the run crosses epochs
    config = cfg(max_steps=8, save_every=4, warmup_steps=2)
    states = {}
    full = train_loop(config, tiny_model(dropout=0.1), rows, checkpoint_dir=tmp_path / "full",
                      report=lambda m, s: s and states.setdefault(m["step"], s))
    assert load_state(tmp_path / "full" / STATE_FILE)["position"]["step"] == 8
    saved = load_state(save_state(states[4], tmp_path / "at4"))  # through the file, as a restart would
    resumed = train_loop(config, tiny_model(seed=1, dropout=0.1), rows, resume_state=saved)
    assert full["history"][-1]["epoch"] > 0
    assert [m["step"] for m in resumed["history"]] == [5, 6, 7, 8]
    for a, b in zip(full["history"][4:], resumed["history"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)


def test_grad_accum_equals_larger_micro_batch_on_cpu():
    rows = random_rows(64, seed=3)
    one, two = tiny_model(), tiny_model()
    a = train_loop(cfg(max_steps=2, micro_batch_tokens=4 * 48, grad_accum=1), one, rows)
    b = train_loop(cfg(max_steps=2, micro_batch_tokens=2 * 48, grad_accum=2), two, rows)
    for x, y in zip(a["history"], b["history"]):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
    for p, q in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)


def test_ddp_wrapped_model_trains_like_plain_on_cpu(tmp_path):
    """DDP at world size 1 (gloo): no_sync on the first micro-batch, state dicts through the wrapper."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    rows = random_rows(64, seed=4)
    config = cfg(max_steps=2, micro_batch_tokens=2 * 48, grad_accum=2)
    plain = train_loop(config, tiny_model(), rows)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        states = []
        wrapped = train_loop(config, DistributedDataParallel(tiny_model()), rows, report=lambda m, s: states.append(s))
    finally:
        dist.destroy_process_group()
    assert [m["loss"] for m in plain["history"]] == pytest.approx([m["loss"] for m in wrapped["history"]], abs=1e-5)
    assert all(not k.startswith("module.") for k in states[-1]["model"])


def test_config_rejects_bad_values_on_cpu():
    with pytest.raises(ConfigError, match="micro_batch_tokens"):
        SFTConfig(max_len=512, micro_batch_tokens=100)
    with pytest.raises(ConfigError, match="grad_accum"):
        dataclasses.replace(SFTConfig(), grad_accum=0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        SFTConfig(label_smoothing=1.0)


def test_label_smoothing_mixes_in_the_mean_log_prob_over_the_vocabulary_on_cpu():
    """ε-smoothed token loss = (1 - ε) NLL + ε mean_v(-log p_v), from the same logits; and the
    training step takes its loss from it."""
    model = tiny_model().eval()
    rows = random_rows(6, seed=3)
    batch = collate(rows, [[i] for i in range(6)])
    with torch.no_grad():
        plain, smoothed = token_losses(model, batch), token_losses(model, batch, label_smoothing=0.3)
        logits = model(input_ids=batch.input_ids).logits
        logp = torch.log_softmax(logits[batch.targets != IGNORE_INDEX].float(), -1)
    torch.testing.assert_close(smoothed, 0.7 * plain + 0.3 * -logp.mean(-1), rtol=0, atol=1e-5)

    for eps, expected in ((0.0, plain), (0.3, smoothed)):
        m = tiny_model()
        cfg = SFTConfig(max_len=48, micro_batch_tokens=6 * 48, label_smoothing=eps)
        opt = torch.optim.SGD(m.parameters(), lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        loss_sum, _, _ = sft.train_step(m, opt, sched, [batch], cfg, torch.device("cpu"), world_size=1)
        assert float(loss_sum) == pytest.approx(float(expected.sum()), abs=1e-4)


def test_lora_trains_only_adapter_weights_and_reloads_on_cpu(tmp_path):
    """With LoRA the base stays frozen; the saved adapter loads through peft with the same logits."""
    from peft import PeftModel, get_peft_model

    from genrec.models.loading import load_checkpoint, lora_config, save_checkpoint
    from genrec.models.tiny import train_tokenizer

    tokenizer = train_tokenizer(["some words to learn a vocabulary from", "more words, other words"], vocab_size=300)
    base = tiny_model()
    before = {id(p): p.detach().clone() for p in base.parameters()}  # peft keeps these Parameter objects
    model = get_peft_model(base, lora_config(Lora(r=4, alpha=8, dropout=0.0, target_modules=["all-linear"])))
    rows = random_rows(n=24)
    train_loop(cfg(max_steps=4, lr=1e-2), model, rows)
    params = dict(model.named_parameters())
    base_params = [p for p in params.values() if id(p) in before]
    assert len(base_params) == len(before) and all(torch.equal(before[id(p)], p) for p in base_params)
    lora_b = [p for name, p in params.items() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: non-zero means it trained

    save_checkpoint(tmp_path / "ckpt", model, tokenizer, "sft", {}, {})
    loaded, _, meta = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert isinstance(loaded, PeftModel) and meta["base_model"]
    ids = torch.tensor([rows.ids[:16].astype("int64")])
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-5)
