"""`python -m lmjax.benchmark`: a tiny sweep writes its files with real
figures, the peer comparison takes turns, and bad sweeps fail before any
compilation."""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmjax.benchmarking import points, results, sweep
from lmjax.benchmarking.points import Point, Settings
from lmjax.errors import UserError
from lmjax.model import BertConfig, flops_per_token
from lmjax.model.modernbert import ModernBertConfig

ROOT = Path(__file__).parents[1]
QUICK = Settings(steps=2, rounds=2, warmup=0, vocab_size=512)


def _failing_worker(point, settings):
  raise MemoryError("RESOURCE_EXHAUSTED: out of memory allocating 1.2 GiB")


@pytest.mark.slow
def test_a_tiny_sweep_writes_rows_csv_and_plot(tmp_path):
  swept = points.sweep(dict(size=["tiny"], seq_len=[16], batch=[8, 16],
                            objective=["mlm_nsp"]))
  assert [p.batch for p in swept] == [8, 16]
  swept = swept[:1] + [Point("tiny", 16, 8, objective="classification"),
                       Point("tiny", 16, 8, objective="mlm", architecture="modernbert")]
  lines = []
  rows = sweep.run(swept, QUICK, str(tmp_path), echo=lines.append)
  assert [r["implementation"] for r in rows] == ["lmjax"] * 3
  for row in rows:
    assert "error" not in row, row
    assert row["devices"] == 8 and row["steps_timed"] == 4
    assert row["step_ms_min"] <= row["step_ms_median"]
    assert row["tokens_per_s"] == pytest.approx(
        row["batch"] * row["seq_len"] / row["step_ms_median"] * 1e3, rel=1e-3)
    assert 0 < row["useful_mfu"] <= row["model_mfu"] and row["compile_s"] > 0
    assert row["compiled_peak_bytes"] > row["compiled_argument_bytes"] > 0
    assert row["peak_rss_bytes"] > 100 * 2**20 and row["loss_finite"]
  # The MLM decoder at 3 of 16 positions is useful work; at all 16, model work.
  mlm = rows[0]
  cfg = BertConfig.named("tiny", vocab_size=512)
  assert mlm["predictions"] == 3 and mlm["model_mfu"] / mlm["useful_mfu"] == pytest.approx(
      flops_per_token(cfg, 16, 16) / flops_per_token(cfg, 16, 3), rel=1e-2)
  assert rows[1]["objective"] == "classification" and rows[1]["model_mfu"] == rows[1]["useful_mfu"]
  modern = rows[2]
  cfg = ModernBertConfig.named("tiny", vocab_size=512)
  assert modern["architecture"] == "modernbert" and modern["model_mfu"] / modern[
      "useful_mfu"] == pytest.approx(flops_per_token(cfg, 16, 16) / flops_per_token(cfg, 16, 3),
                                     rel=1e-2)
  stored = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
  assert stored == rows
  with open(tmp_path / "results.csv", encoding="utf-8") as f:
    table = list(csv.DictReader(f))
  assert [r["objective"] for r in table] == ["mlm_nsp", "classification", "mlm"]
  assert float(table[1]["tokens_per_s"]) == rows[1]["tokens_per_s"]
  assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert len(lines) == 6 and "tokens/s" in lines[1] and lines[0].startswith("[1/3] tiny")
  assert lines[4].startswith("[3/3] modernbert-tiny L16 B8")


@pytest.mark.parametrize("objective", ["mlm_nsp", "classification"])
def test_packed_points_hold_the_padded_points_sequences_in_fewer_rows(objective):
  point = Point("tiny", 128, 64, objective=objective, lengths="rt_polarity")
  padded = points.synthetic_batch(point, QUICK)
  packed = points.synthetic_batch(dataclasses.replace(point, packing=True), QUICK,
                                  row_multiple=4)
  lengths = points.sequence_lengths(point)
  np.testing.assert_array_equal(padded["input_mask"].sum(1), lengths)
  assert 30 < lengths.mean() < 45 and lengths.max() <= 128  # rt_polarity's 37 on average
  figures = points.batch_figures(packed)
  assert figures["real_tokens"] == points.batch_figures(padded)["real_tokens"] == lengths.sum()
  assert figures["rows"] % 4 == 0 and figures["rows"] < 64 // 2
  assert figures["real_token_fraction"] > 0.7 > points.batch_figures(padded)["real_token_fraction"]
  # Every sequence's tokens, one after another in its row, at its own positions.
  flat_ids = padded["input_ids"][padded["input_mask"] > 0]
  assert sorted(packed["input_ids"][packed["input_mask"] > 0]) == sorted(flat_ids)
  assert (packed["positions"][packed["example_index"] >= 0] < 128).all()
  if objective == "mlm_nsp":  # every MLM target kept, in a row's prediction slots
    assert packed["masked_weights"].sum() == padded["masked_weights"].sum() > 64
    assert (padded["masked_weights"].sum(1) == np.ceil(0.15 * lengths)).all()
  peer = points.padded_to_longest(padded)
  assert peer["input_ids"].shape == (64, lengths.max())


def test_long_tailed_lengths_are_mostly_short_with_a_tail_to_full_length():
  lengths = points.sequence_lengths(Point("tiny", 512, 1024, lengths="long_tailed"))
  assert 100 < np.median(lengths) < 160 and lengths.min() >= 8
  assert 0.03 < (lengths == 512).mean() < 0.15  # the clipped tail
  assert (points.sequence_lengths(Point("tiny", 64, 8)) == 64).all()


@pytest.mark.slow
def test_the_torch_peer_takes_turns_on_the_same_sequences_padded_to_the_longest(tmp_path):
  # Packed lmjax rows against the peer's dynamic padding; forward and backward only.
  settings = Settings(steps=2, rounds=2, warmup=0, vocab_size=512, peer="hf_torch",
                      mode="forward_backward")
  point = Point("tiny", 64, 16, lengths="long_tailed", packing=True)
  rows = sweep.measure(point, settings)
  assert [r["implementation"] for r in rows] == ["lmjax", "hf_torch"]
  lmjax, peer = rows
  assert lmjax["steps_timed"] == peer["steps_timed"] == 4 and peer["loss_finite"]
  assert lmjax["speedup_vs_peer"] == pytest.approx(
      lmjax["tokens_per_s"] / peer["tokens_per_s"], rel=1e-2)
  lengths = points.sequence_lengths(point)
  assert lmjax["real_tokens"] == peer["real_tokens"] == lengths.sum()
  assert lmjax["rows"] < 16 == peer["rows"] and lmjax["token_slots"] == 64 * lmjax["rows"]
  assert peer["token_slots"] == 16 * lengths.max()
  for row in rows:  # tokens/s counts real tokens
    assert row["tokens_per_s"] == pytest.approx(
        lengths.sum() / row["step_ms_median"] * 1e3, rel=1e-3)
  assert "real)" in results.line(lmjax) and "padded to longest" in results.line(peer)
  # Untrained BERTs of 512 tokens start near ln(512) + ln(2).
  assert abs(lmjax["final_loss"] - peer["final_loss"]) < 0.5


def test_a_point_that_fails_is_a_row_and_the_sweep_goes_on(tmp_path):
  rows = sweep.measure(Point("tiny", 16, 8), QUICK, lmjax_worker=_failing_worker)
  assert rows == [{**rows[0], "error": "MemoryError: RESOURCE_EXHAUSTED: out of memory "
                   "allocating 1.2 GiB"}]
  assert "failed: MemoryError" in results.line(rows[0])


@pytest.mark.parametrize("values, settings, message", [
    (dict(size=["huge"]), {}, "--size=huge: must be one of tiny"),
    (dict(seq_len=[1000]), {}, "--seq_len=1000: must be in [2, 512]"),
    (dict(batch=[0]), {}, "--batch=0: must be at least 1"),
    (dict(batch=[12]), {}, "--batch=12: must be divisible by the mesh's data x fsdp (8"),
    (dict(dtype=["int8"]), {}, "--dtype=int8: must be float32, bfloat16 or float16"),
    (dict(attention_impl=["cudnn"]), {}, "--attention_impl=cudnn: must be xla on cpu"),
    (dict(remat_policy=["most"]), {}, "--remat_policy=most: must be one of none"),
    (dict(objective=["mlm"]), {}, "--objective=mlm: must be one of mlm_nsp"),
    (dict(lengths=["wiki"]), {}, "--lengths=wiki: must be one of full, rt_polarity"),
    (dict(mesh=["4x1x1"]), {}, "--mesh=4x1x1: 4 devices, but there are 8"),
    (dict(mesh=["2x2"]), {}, "--mesh=2x2: expected DATAxFSDPxTENSOR"),
    (dict(mesh=["2x2x2"], batch=[6]), {}, "--batch=6: must be divisible by the mesh's"),
    ({}, dict(steps=0), "--steps=0: must be at least 1"),
    ({}, dict(mode="fast"), "--mode='fast': must be one of train"),
    ({}, dict(peer="hf_flax"), "--compare='hf_flax': must be one of hf_torch"),
    (dict(architecture=["gpt"]), {}, "--architecture=gpt: must be one of bert, modernbert"),
    (dict(architecture=["modernbert"], size=["mini"], objective=["mlm"]), {},
     "--size=mini: must be one of tiny, base, large for modernbert"),
    (dict(architecture=["modernbert"]), {},
     "--objective=mlm_nsp: must be one of mlm, classification for modernbert"),
])
def test_bad_sweeps_fail_in_one_line_before_anything_compiles(values, settings, message):
  swept = points.sweep({"size": ["tiny"], "seq_len": [16], "batch": [8], **values})
  with pytest.raises(UserError) as raised:
    points.check(swept, Settings(**settings), device_count=8, platform="cpu")
  assert str(raised.value).startswith(message), str(raised.value)


def _cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "lmjax.benchmark", *args], capture_output=True,
                        text=True, cwd=cwd, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("args, message", [
    (["--batch=8,x"], "error: --batch: 'x' is not an integer"),
    (["--scan_layers=maybe"], "error: --scan_layers: 'maybe' is not a boolean"),
    (["--packing=maybe"], "error: --packing: 'maybe' is not a boolean"),
    (["--architecture=gpt"], "error: --architecture=gpt: must be one of bert, modernbert"),
    (["--size=tiny", "--seq_len=16", "--batch=8", "--output="], "error: --output is empty"),
    (["--size=tiny", "--seq_len=16", "--batch=8", "--output=/proc/lmjax"],
     "error: --output=/proc/lmjax: cannot write there"),
])
def test_the_command_line_refuses_bad_values_in_one_line(args, message, tmp_path):
  done = _cli(*args, "--steps=1", cwd=tmp_path)
  assert done.returncode == 2 and done.stderr.strip().startswith(message), done.stderr[-2000:]
  assert len(done.stderr.strip().splitlines()) == 1
  assert list(tmp_path.iterdir()) == []


def test_an_output_that_is_a_file_is_one_line_and_stays(tmp_path):
  (tmp_path / "out").write_text("keep")
  done = _cli("--size=tiny", "--seq_len=16", "--batch=8", f"--output={tmp_path / 'out'}")
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.strip() == f"error: --output={tmp_path / 'out'} is a file, not a directory"
  assert (tmp_path / "out").read_text() == "keep"


@pytest.mark.slow
def test_an_interrupted_sweep_keeps_its_points_so_far(tmp_path):
  process = subprocess.Popen(
      [sys.executable, "-m", "lmjax.benchmark", "--size=tiny", "--seq_len=16",
       "--batch=8,16,24", "--steps=2", "--rounds=1", "--vocab_size=512",
       f"--output={tmp_path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  for line in process.stdout:
    if "tokens/s" in line:  # the first point is measured
      process.send_signal(signal.SIGTERM)
      break
  _, err = process.communicate(timeout=120)
  assert process.returncode == 130, err[-2000:]
  assert err.strip() == f"interrupted: the points measured so far are in {tmp_path}"
  rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
  assert [r["batch"] for r in rows] == [8]
  assert (tmp_path / "results.csv").exists() and (tmp_path / "results.png").exists()


def test_a_sweep_starts_with_what_every_point_shares():
  assert points.describe(Settings()).startswith(
      "vocabulary 30,522 (BERT's; the CPU configs' tokenizers have 8,000 pieces: "
      "--vocab_size=8000 times their step), MLM positions 15% of a sequence")
  assert points.describe(QUICK).startswith("vocabulary 512, MLM positions 15%")
