"""StarGAN for emoji_stargan.py: the teacher's (and the scratch baseline's) adversarial training, the tone
classifier that judges translations, and the scores of the table.

    python pipelines/train_stargan.py train --out runs/emoji_stargan/teacher                   # 6 blocks
    python pipelines/train_stargan.py train --out runs/emoji_stargan/scratch2 --blocks 2       # the baseline
    python pipelines/train_stargan.py classifier --out runs/emoji_stargan/classifier.pt
    python pipelines/train_stargan.py score --teacher runs/emoji_stargan/teacher/generator.pt \\
        --classifier runs/emoji_stargan/classifier.pt --generator lit=runs/.../student.pt \\
        --generator scratch=runs/emoji_stargan/scratch2/generator.pt --out runs/emoji_stargan/scores.json

``train`` is StarGAN's (Choi et al. 2018; its RaFD setting, one domain label per image): WGAN-GP adversarial
loss, the discriminator's domain classification loss on real images and the generator's on its fakes, the
cycle reconstruction loss (L1, lambda 10), lambda_cls 1, lambda_gp 10, one generator step per 5
discriminator steps, Adam lr 1e-4 betas (0.5, 0.999), batch 16, the learning rates decayed linearly to 0
over the second half. Targets are drawn uniformly among the 6 tones; real images are flipped at random. It
saves its state every --save-every iterations and resumes from it, and writes ``generator.pt`` (the litcache
teacher checkpoint format: {"state_dict", "recipe"}) and ``log.json`` at the end.

``score`` translates every held-out emoji to every other tone (the recipe's test rows) and reports, for the
teacher and each generator: MSE, PSNR and SSIM against the teacher's images (outputs in [-1, 1]), and the
share of outputs the classifier assigns the target tone. It writes a PNG grid (rows: held-out emoji and
target tones; columns: input, teacher, then each generator).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from litcache.errors import LitcacheError
from litcache.runtime.checkpoint import fit_state, load_checkpoint, save_atomic

DEFAULT_RECIPE = Path(__file__).with_name("emoji_stargan.py")


def _checkpoint(path: str, what: str, how: str) -> dict:
    """A checkpoint that must exist, or an error naming the command that makes it."""
    if not Path(path).is_file():
        raise LitcacheError(f"Expected {what} at {str(path)!r}, but there is none. Make it with `python "
                            f"pipelines/train_stargan.py {how}`.")
    return load_checkpoint(path)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"stargan_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def gradient_penalty(discriminator, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    alpha = torch.rand(len(real), 1, 1, 1, generator=generator)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    source, _ = discriminator(mixed)
    (grad,) = torch.autograd.grad(source.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def train(args) -> dict:
    module = load_module(Path(args.recipe))
    images, tones = module.images_and_tones("train")
    torch.manual_seed(args.seed)
    rng = torch.Generator().manual_seed(args.seed)
    blocks = args.blocks
    G, D = module.generator(blocks)(), module.discriminator()
    g_opt = torch.optim.Adam(G.parameters(), args.lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(D.parameters(), args.lr, betas=(0.5, 0.999))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path, start, log, seconds = out / "state.pt", 0, [], 0.0
    settings = {k: getattr(args, k) for k in ("blocks", "iterations", "batch_size", "lr", "n_critic", "lambda_cls",
                                              "lambda_rec", "lambda_gp", "seed")}
    # What the weights' shapes may not tell apart: another image side or recipe.
    settings.update(recipe=Path(args.recipe).name, image_size=images.shape[-1], conv_dim=G.stem[0].out_channels,
                    train_images=len(images))
    if (out / "generator.pt").exists() and (out / "log.json").exists():
        summary = json.loads((out / "log.json").read_text())
        if summary.get("settings") == settings:
            print(f"{out / 'generator.pt'} is trained already ({args.iterations} iterations)")
            return summary
        raise LitcacheError(f"Expected {str(out)!r} to be empty or to hold a run of the same settings; it holds a "
                            f"finished run of {summary.get('settings')}, asked {settings}. Use another --out.")
    if state_path.exists():
        state = load_checkpoint(state_path)
        if state.get("settings") != settings:
            raise LitcacheError(f"Expected {str(out)!r} to continue a run of the same settings; it holds "
                                f"{state.get('settings')}, asked {settings}. Use another --out.")
        fit_state(G, state["G"], f"The generator in {str(state_path)!r}")
        fit_state(D, state["D"], f"The discriminator in {str(state_path)!r}")
        g_opt.load_state_dict(state["g_opt"]), d_opt.load_state_dict(state["d_opt"])
        rng.set_state(state["rng"])
        start, log, seconds = state["iteration"], state["log"], state["seconds"]
        print(f"resuming at iteration {start}")
    G.train(), D.train()
    c = module.C_DIM
    t0, window = time.perf_counter(), []
    for it in range(start, args.iterations):
        decay_from = args.iterations // 2
        lr = args.lr * (1 - max(0, it - decay_from) / max(1, args.iterations - decay_from))
        for opt in (g_opt, d_opt):
            for group in opt.param_groups:
                group["lr"] = lr
        index = torch.randint(len(images), (args.batch_size,), generator=rng)
        real, source_tone = _flip(images[index], rng), tones[index]
        target = torch.randint(c, (args.batch_size,), generator=rng)

        # Discriminator: real vs fake (WGAN-GP) and the real images' tones.
        out_src, out_cls = D(real)
        with torch.no_grad():
            fake = G(module.with_target(real, target))
        fake_src, _ = D(fake)
        d_cls = F.cross_entropy(out_cls, source_tone)
        d_loss = (-out_src.mean() + fake_src.mean() + args.lambda_cls * d_cls
                  + args.lambda_gp * gradient_penalty(D, real, fake, rng))
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        record = {"d_loss": d_loss.item(), "d_cls": d_cls.item()}

        # Generator, every n_critic steps: fool D, be classified as the target, translate back to the source.
        if (it + 1) % args.n_critic == 0:
            fake = G(module.with_target(real, target))
            fake_src, fake_cls = D(fake)
            rec = G(module.with_target(fake, source_tone))
            g_cls, g_rec = F.cross_entropy(fake_cls, target), (real - rec).abs().mean()
            g_loss = -fake_src.mean() + args.lambda_rec * g_rec + args.lambda_cls * g_cls
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
            record.update(g_loss=g_loss.item(), g_cls=g_cls.item(), g_rec=g_rec.item())
        window.append(record)
        done = it + 1
        if done % args.log_every == 0 or done == args.iterations:
            # A window without a generator step has no generator losses: None, not 0.
            mean = {k: (sum(r[k] for r in window if k in r) / n if (n := sum(k in r for r in window)) else None)
                    for k in ("d_loss", "d_cls", "g_loss", "g_cls", "g_rec")}
            elapsed = seconds + time.perf_counter() - t0
            log.append({"iteration": done, "lr": lr, "seconds": round(elapsed, 1), **mean})
            print(f"it {done}/{args.iterations}  " + "  ".join(f"{k} {v:.4f}" for k, v in mean.items() if v is not None)
                  + f"  {elapsed:.0f} s", flush=True)
            window = []
        if done % args.save_every == 0 and done < args.iterations:
            save_atomic({"G": G.state_dict(), "D": D.state_dict(), "g_opt": g_opt.state_dict(),
                         "d_opt": d_opt.state_dict(), "rng": rng.get_state(), "iteration": done, "log": log,
                         "seconds": seconds + time.perf_counter() - t0, "settings": settings}, state_path)
    seconds += time.perf_counter() - t0
    recipe_name = module.recipe.name
    save_atomic({"state_dict": G.state_dict(), "recipe": recipe_name, "blocks": blocks, "settings": settings},
                out / "generator.pt")
    torch.save(D.state_dict(), out / "discriminator.pt")
    summary = {"settings": settings, "seconds": round(seconds, 1), "log": log}
    (out / "log.json").write_text(json.dumps(summary, indent=1) + "\n")
    state_path.unlink(missing_ok=True)
    print(f"wrote {out / 'generator.pt'} ({args.iterations} iterations, {seconds:.0f} s)")
    return summary


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    right = sum((model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum().item()
                for i in range(0, len(images), batch))
    return right / max(1, len(images))


def classifier(args) -> dict:
    module = load_module(Path(args.recipe))
    (train_x, train_y), (test_x, test_y) = module.images_and_tones("train"), module.images_and_tones("test")
    torch.manual_seed(args.seed)
    rng = torch.Generator().manual_seed(args.seed)
    model = module.tone_classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = args.epochs * math.ceil(len(train_x) / 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=steps)
    for epoch in range(args.epochs):
        model.train()
        for index in torch.randperm(len(train_x), generator=rng).split(64):
            loss = F.cross_entropy(model(_flip(train_x[index], rng)), train_y[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    result = {"train_accuracy": accuracy(model, train_x, train_y), "test_accuracy": accuracy(model, test_x, test_y),
              "epochs": args.epochs, "seed": args.seed, "test_images": len(test_x)}
    save_atomic({"state_dict": model.state_dict(), **result}, Path(args.out))
    print(f"tone classifier: real held-out emoji {result['test_accuracy']:.4f} ({len(test_x)} images), "
          f"training images {result['train_accuracy']:.4f}; wrote {args.out}")
    return result


def load_generator(module, path: str):
    """A generator from train_stargan's generator.pt or from a litcache student checkpoint."""
    obj = _checkpoint(path, "a generator checkpoint", "train --out DIR (DIR/generator.pt)")
    if "blocks" in obj and "state_dict" in obj:
        model = module.generator(obj["blocks"])()
        fit_state(model, obj["state_dict"], f"The generator {str(path)!r}")
        return model.eval()
    from litcache.training.student import load_student

    return load_student(path, module.recipe).eval()


@torch.no_grad()
def score(args) -> dict:
    from litcache.evaluation import psnr, save_grid, ssim

    module = load_module(Path(args.recipe))
    dataset = module.load_split("test")
    inputs = torch.stack([dataset[r][0] for r in range(len(dataset))])
    targets = torch.tensor([dataset.target(r) for r in range(len(dataset))])
    for spec in args.generator:
        if not spec.partition("=")[2]:
            raise LitcacheError(f"Expected --generator NAME=CHECKPOINT, got {spec!r}.")
    judge = module.tone_classifier()
    saved = _checkpoint(args.classifier, "the tone classifier", "classifier --out FILE")
    fit_state(judge, saved.get("state_dict", saved), f"The classifier {str(args.classifier)!r}")
    judge.eval()

    def run(model):
        return torch.cat([model(inputs[i:i + 128]) for i in range(0, len(inputs), 128)])

    teacher = load_generator(module, args.teacher)
    reference = run(teacher)
    real_x, real_y = module.images_and_tones("test")
    results = {"rows": len(inputs), "held_out_emoji": len(real_x) // module.C_DIM,
               "classifier_on_real_test_images": accuracy(judge, real_x, real_y),
               "teacher": {"tone_accuracy": accuracy(judge, reference, targets)}}
    columns = [reference]
    for spec in args.generator:
        name, _, path = spec.partition("=")
        out = run(load_generator(module, path))
        mse = F.mse_loss(out, reference).item()
        results[name] = {"checkpoint": path, "mse_vs_teacher": mse, "psnr_vs_teacher_db": psnr(mse),
                         "ssim_vs_teacher": ssim(out, reference).mean().item(),
                         "tone_accuracy": accuracy(judge, out, targets)}
        columns.append(out)
    rows = torch.linspace(0, len(inputs) - 1, args.grid_rows).long()
    save_grid([(inputs[r], *(c[r] for c in columns)) for r in rows], args.grid)
    results["grid"] = str(args.grid)
    results["grid_columns"] = ["input", "teacher", *(s.partition("=")[0] for s in args.generator)]
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    for name, r in results.items():
        if isinstance(r, dict):
            print(f"{name:10s} " + "  ".join(f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float)))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="a StarGAN (generator + discriminator), adversarially")
    t.add_argument("--out", required=True)
    t.add_argument("--blocks", type=_positive, default=6, help="residual blocks of the generator")
    t.add_argument("--iterations", type=_positive, default=20000)
    t.add_argument("--batch-size", type=_positive, default=16)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--n-critic", type=_positive, default=5)
    t.add_argument("--lambda-cls", type=float, default=1.0)
    t.add_argument("--lambda-rec", type=float, default=10.0)
    t.add_argument("--lambda-gp", type=float, default=10.0)
    t.add_argument("--log-every", type=_positive, default=250)
    t.add_argument("--save-every", type=_positive, default=1000)
    c = sub.add_parser("classifier", help="the tone classifier that judges translations")
    c.add_argument("--out", required=True)
    c.add_argument("--epochs", type=_positive, default=15)
    s = sub.add_parser("score", help="MSE, PSNR, SSIM against the teacher and tone accuracy, on held-out emoji")
    s.add_argument("--teacher", required=True)
    s.add_argument("--classifier", required=True)
    s.add_argument("--generator", action="append", default=[], help="NAME=CHECKPOINT, repeatable")
    s.add_argument("--out", required=True)
    s.add_argument("--grid", default=None, help="PNG grid (default: beside --out)")
    s.add_argument("--grid-rows", type=_positive, default=12)
    for sp in (t, c, s):
        sp.add_argument("--recipe", default=str(DEFAULT_RECIPE))
        sp.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.command == "score" and args.grid is None:
        args.grid = str(Path(args.out).with_suffix(".png"))
    try:
        {"train": train, "classifier": classifier, "score": score}[args.command](args)
    except LitcacheError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
