"""A new objective in a page: replaced-token detection (ELECTRA, Clark et
al., 2020), trained with lmjax's generic step and nothing of its trainer.

  python examples/replaced_token_detection.py --steps=300 --output=runs/rtd

A small generator (one-layer BERT, MLM head) fills the masked positions of
the built-in corpus's batches with tokens it samples; a discriminator
(BERT-tiny, a logit per token) tells which tokens were replaced. The loss
is the MLM loss plus `--rtd_weight` (ELECTRA's 50) times the
discriminator's; no shared embeddings, no dropout. Writes `losses.png`.

The generator's tokens are as frequent as those they replace: after 800
steps on 2 CPU cores the discriminator knows only how many are replaced
(0.868, as "never replaced"); `--corruption=uniform` (any token) it spots
within 150 steps (0.905 against 0.859).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lmjax import cli, parallel, scripts
from lmjax.data import pretrain_input
from lmjax.errors import UserError
from lmjax.model import BertConfig, BertForPreTraining, BertModel
from lmjax.train import contrastive, mlm_nsp, steps

plt = scripts.pyplot()


class Discriminator(nn.Module):
  """BERT, then one logit per token: was it replaced?"""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, segment_ids, input_mask):
    sequence_BxLxD, _ = BertModel(self.config, name="bert")(input_ids, segment_ids, input_mask)
    return nn.Dense(1, name="replaced")(sequence_BxLxD)[..., 0]  # [B, L]


def make_loss(generator, discriminator, rtd_weight: float, uniform: bool = False):
  """`loss_fn(params, batch, rng) -> (loss, parts)`, as steps.make_step takes it;
  `uniform` replaces with any token of the vocabulary, not the generator's."""

  def loss_fn(params, batch, rng):
    out = generator.apply({"params": params["generator"]}, batch["input_ids"],
                          batch["segment_ids"], batch["input_mask"], batch["masked_positions"])
    mlm = mlm_nsp.losses({"mlm_logits": out["mlm_logits"]}, batch)
    logits_BxPxV = jax.lax.stop_gradient(out["mlm_logits"])
    sampled_BxP = jax.random.categorical(rng, 0 * logits_BxPxV if uniform else logits_BxPxV)
    original_BxL = contrastive.original_ids(batch)  # the masked slots' tokens put back
    corrupted_BxL = contrastive.original_ids({**batch, "masked_ids": sampled_BxP})
    mask_BxL = batch["input_mask"].astype(jnp.float32)
    replaced_BxL = (corrupted_BxL != original_BxL).astype(jnp.float32) * mask_BxL
    logits_BxL = discriminator.apply({"params": params["discriminator"]}, corrupted_BxL,
                                     batch["segment_ids"], batch["input_mask"])
    mean = lambda x_BxL: (x_BxL * mask_BxL).sum() / mask_BxL.sum()  # noqa: E731
    rtd_loss = mean(optax.sigmoid_binary_cross_entropy(logits_BxL, replaced_BxL))
    parts = dict(mlm_loss=mlm["mlm_loss"], rtd_loss=rtd_loss, replaced_share=mean(replaced_BxL),
                 rtd_accuracy=mean((logits_BxL > 0) == (replaced_BxL > 0)))
    return mlm["mlm_loss"] + rtd_weight * rtd_loss, parts

  return loss_fn


def parse(argv):
  parser = scripts.parser(__doc__, output="losses.png")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--max_seq_length", type=int, default=64)
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--rtd_weight", type=float, default=50.0)
  parser.add_argument("--corruption", default="generator", choices=("generator", "uniform"),
                      help="replacements sampled from the generator, or any token")
  parser.add_argument("--seed", type=int, default=0)
  args = scripts.parse(parser, argv)
  if args.steps < 1 or args.batch_size < 1 or not 8 <= args.max_seq_length <= 512:
    raise UserError("--steps and --batch_size must be at least 1, --max_seq_length 8 to 512")
  return args


def plot(history: list[dict]):
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  for ax, curves in ((left, {"mlm_loss": "mlm_loss", "rtd_loss": "rtd_loss"}),
                     (right, {"rtd_accuracy": "discriminator accuracy",
                              "replaced_share": "always 'original'"})):
    for key, label in curves.items():
      values = [h[key] for h in history]
      ax.plot([1 - v for v in values] if key == "replaced_share" else values, label=label)
    ax.set_xlabel("step")
    ax.legend()
  return fig


def main(argv: list[str]) -> list[dict]:
  args = parse(argv)
  mesh = parallel.make_mesh()
  if args.batch_size % parallel.batch_shards(mesh):
    raise UserError(f"--batch_size={args.batch_size} must divide into "
                    f"{parallel.batch_shards(mesh)} devices' shares")
  data = cli.load_config("configs/pretrain.py").data
  data.update(max_seq_length=args.max_seq_length,
              max_predictions_per_seq=max(1, round(0.15 * args.max_seq_length)))
  dataset, tokenizer, _ = pretrain_input.pretraining_input(data, args.batch_size, args.seed)
  generator = BertForPreTraining(BertConfig.named("tiny", vocab_size=tokenizer.vocab_size,
                                                  num_layers=1, hidden_size=64,
                                                  intermediate_size=256))
  discriminator = Discriminator(BertConfig.named("tiny", vocab_size=tokenizer.vocab_size))
  first = dataset[0]

  def init(rng):
    (g, d), inputs = jax.random.split(rng), [first[k] for k in BertModel.INPUTS]
    return {"generator": generator.init(g, *inputs, first["masked_positions"])["params"],
            "discriminator": discriminator.init(d, *inputs)["params"]}

  schedule = optax.warmup_cosine_decay_schedule(0.0, args.learning_rate,
                                                max(1, args.steps // 10), args.steps)
  tx = optax.adamw(schedule, weight_decay=0.01)
  state, shardings = steps.create_train_state(init, tx, mesh, jax.random.key(args.seed))
  train_step = steps.jit_train_step(
      steps.make_step(make_loss(generator, discriminator, args.rtd_weight,
                                args.corruption == "uniform"), tx,
                      schedule=schedule), shardings, mesh)
  history, rng = [], jax.random.key(args.seed + 1)
  for step in range(args.steps):
    state, metrics = train_step(state, parallel.shard_batch(dataset[step], mesh), rng)
    history.append(h := {k: float(v) for k, v in metrics.items()})
    if step % 50 == 0 or step == args.steps - 1:
      print(f"step {step + 1}: mlm_loss {h['mlm_loss']:.3f}, rtd_loss {h['rtd_loss']:.4f}, "
            f"discriminator accuracy {h['rtd_accuracy']:.4f} "
            f"(always 'original': {1 - h['replaced_share']:.4f})", flush=True)
  print(f"wrote {scripts.save_figure(plot(history), args.output, 'losses.png')}")
  return history


if __name__ == "__main__":
  scripts.run(main)
