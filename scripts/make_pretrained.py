"""Ship a trained world model: export it to ``wmplan/pretrained/<name>.safetensors`` (EMA
weights and codec in fp16, config and recipe as JSON metadata), then plan with the exported
file under the default protocol and store that ``results.json`` beside it.

    python scripts/make_pretrained.py --name wall --checkpoint outputs/wall_vae_p8/checkpoints/latest.ckpt \\
        --train "experiment=wall_vae model.patch_size=8" --plan "env=wall" \\
        --collect "wmplan-collect env=wall episodes=1920 policy=sticky_random seed=0" \\
        --train-vae "wmplan-train-vae env=wall"

``tests/test_pretrained.py`` plans one episode with every shipped model and fails when the
recorded recipe no longer composes to the file's model or planning settings: rerun this
script after changing a recipe or ``plan.yaml``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from wmplan.checkpoint import PRETRAINED_DIR, export_pretrained
from wmplan.config_dir import CONFIG_DIR
from wmplan.planners.evaluate import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="loaded as world_model=pretrained:<name>")
    parser.add_argument("--checkpoint", required=True, help="the training checkpoint (latest.ckpt)")
    parser.add_argument("--train", required=True, help="wmplan-train overrides that made it (besides paths)")
    parser.add_argument("--plan", required=True, help="wmplan-plan overrides of its protocol (env=..., execute_k=...)")
    parser.add_argument("--collect", default="", help="the wmplan-collect command of its data (recorded)")
    parser.add_argument("--train-vae", default="", help="the wmplan-train-vae command of its codec (recorded)")
    parser.add_argument("--episodes", type=int, default=50)
    args = parser.parse_args()
    recipe = {"train": shlex.split(args.train), "plan": shlex.split(args.plan),
              "collect": args.collect, "train_vae": args.train_vae}
    out = export_pretrained(args.checkpoint, PRETRAINED_DIR / f"{args.name}.safetensors", recipe)
    print(f"exported {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*recipe["plan"], f"world_model=pretrained:{args.name}", f"episodes={args.episodes}",
                     f"out_dir={tmp}", "videos=0"]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("plan", overrides=overrides)
        results = evaluate(cfg)
        shutil.copyfile(Path(tmp) / "results.json", PRETRAINED_DIR / f"{args.name}.results.json")
    print(results["summary"])
    print(json.dumps({"plan": overrides}))


if __name__ == "__main__":
    main()
