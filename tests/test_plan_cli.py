"""The plan CLI (wmplan.planners.evaluate.evaluate) on tiny Wall runs: oracle, random and a
trained checkpoint; results.json schema, videos, determinism, env checks."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import RESOLUTION, compose_config
from test_report import linked_files

import wmplan
from wmplan.envs import make
from wmplan.hardware import cpu_name, resolve_precision
from wmplan.planners import build_planner
from wmplan.planners.compare import main as compare_main
from wmplan.planners.compare import paired_difference
from wmplan.planners.evaluate import evaluate, model_and_objective
from wmplan.planners.mpc import episode_video, make_context, obs_batch, observe, run_mpc, sample_episodes
from wmplan.planners.shards import merge_shards
from wmplan.rollout import file_hash
from wmplan.seeding import stream_seed

EPISODES, BUDGET, HORIZON, FRAMESKIP = 3, 10, 2, 5
SUMMARY_KEYS = {"episodes", "success_rate", "success_rate_any", "mean_final_distance", "mean_min_distance",
                "replans", "plan_time_mean_s", "plan_time_max_s"}
RECORD_KEYS = {"episode", "success", "success_any", "final_distance", "min_distance", "steps", "plan_times", "distances",
               "actions", "start_state", "goal_state"}


def plan_config(world_model, out_dir, *extra: str):
    return compose_config("plan", [
        f"world_model={world_model}", f"out_dir={out_dir}", f"env.resolution={RESOLUTION}",
        f"episodes={EPISODES}", f"budget_env_steps={BUDGET}", f"horizon={HORIZON}", "seed=5", "videos=2",
        "planner.num_samples=8", "planner.topk=2", "planner.iterations=2", *extra,
    ])


def deterministic_part(results: dict) -> dict:
    """results.json without wall-clock timings."""
    drop = {"plan_time_mean_s", "plan_time_max_s", "summary", "config", "provenance"}
    out = {k: v for k, v in results.items() if k not in drop}
    out["records"] = [{k: v for k, v in r.items() if k != "plan_times"} for r in results["records"]]
    return out


@pytest.fixture(scope="module")
def runs(checkpoint, tmp_path_factory):
    """results.json of the oracle, random and checkpoint runs (read back from disk)."""
    out = {}
    for name, world_model in (("oracle", "oracle"), ("random", "random"), ("checkpoint", checkpoint)):
        out_dir = tmp_path_factory.mktemp(name)
        returned = evaluate(plan_config(world_model, out_dir))
        written = json.loads((out_dir / "results.json").read_text())
        assert deterministic_part(written) == json.loads(json.dumps(deterministic_part(returned)))
        assert returned["summary"].startswith(f"wall {world_model.name if name == 'checkpoint' else name}: success")
        out[name] = (written, out_dir)
    return out


@pytest.mark.parametrize("name", ["oracle", "random", "checkpoint"])
def test_results_schema_and_videos(runs, name, checkpoint):
    results, out_dir = runs[name]
    assert SUMMARY_KEYS <= results.keys() and {"config", "checkpoint", "provenance", "records"} <= results.keys()
    prov = results["provenance"]  # where the numbers came from
    assert prov["versions"]["torch"] == torch.__version__ and prov["versions"]["wmplan"]
    assert prov["machine"]["cpu"] == cpu_name()
    assert prov["precision"] == (resolve_precision("auto") if name == "checkpoint" else None)
    if (Path(wmplan.__file__).parents[1] / ".git").exists():  # a checkout: commit and dirty flag
        assert len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool)
    assert len(results["success_ci95"]) == 2 and results["success_ci95"][0] <= results["success_rate"]
    records = results["records"]
    assert results["episodes"] == len(records) == EPISODES
    assert results["replans"] == 1  # the whole horizon (2 x 5 env steps) is executed: one plan
    for r in records:
        assert RECORD_KEYS <= r.keys()
        assert r["steps"] == len(r["distances"]) == BUDGET  # one distance per inner env step
        assert np.asarray(r["actions"]).shape == (BUDGET // FRAMESKIP, 2 * FRAMESKIP)
        assert np.abs(np.asarray(r["actions"])).max() <= 1
        assert len(r["plan_times"]) == 1 and r["plan_times"][0] > 0
        assert r["final_distance"] == r["distances"][-1] and r["min_distance"] == min(r["distances"])
        assert len(r["start_state"]) == len(r["goal_state"]) > 0
    assert results["success_rate"] == pytest.approx(np.mean([r["success"] for r in records]))
    assert results["success_rate_any"] == pytest.approx(np.mean([r["success_any"] for r in records]))
    assert results["success_rate_any"] >= results["success_rate"]
    assert results["mean_final_distance"] == pytest.approx(np.mean([r["final_distance"] for r in records]))
    assert results["plan_time_mean_s"] == pytest.approx(records[0]["plan_times"][0])
    # The config is recorded, resolved.
    assert results["config"]["world_model"] == str(checkpoint if name == "checkpoint" else name)
    assert results["config"]["env"]["id"] == "wmplan/Wall-v0" and results["config"]["seed"] == 5
    # Checkpoint identity only for the trained model.
    if name == "checkpoint":
        assert results["checkpoint"] == {"path": str(checkpoint), "sha256": file_hash(checkpoint)}
    else:
        assert results["checkpoint"] == {"path": None, "sha256": None}
    # videos=2: the first two episodes as GIFs named by their outcome.
    expected = [f"episode_{i:03d}_{'success' if records[i]['success'] else 'failure'}.gif" for i in range(2)]
    videos = out_dir / "videos"
    assert sorted(p.name for p in videos.iterdir()) == expected
    assert all((videos / f).read_bytes()[:6] in (b"GIF87a", b"GIF89a") for f in expected)
    # 16 px frames as 256 px panels: executed | predicted (the checkpoint's pixel codec decodes) | goal
    panels = 3 if name == "checkpoint" else 2
    assert iio.imread(videos / expected[0]).shape == (BUDGET // FRAMESKIP + 1, 24 + 256 + 24, 4 + panels * 260, 3)
    # report.html shows the plots and both videos, and links only files that exist
    linked = {f.relative_to(out_dir).as_posix() for f in linked_files(out_dir / "report.html")}
    assert {f"videos/{f}" for f in expected} | {"report_final_distance.png", "report_success_curve.png"} <= linked


def test_all_runs_share_episodes_and_oracle_beats_random(runs):
    starts = {name: [r["start_state"] for r in res["records"]] for name, (res, _) in runs.items()}
    assert starts["oracle"] == starts["random"] == starts["checkpoint"]  # episodes come from the seed alone
    # The oracle plans with the true dynamics and cost; random actions ignore the goal.
    assert runs["oracle"][0]["mean_final_distance"] < runs["random"][0]["mean_final_distance"]
    actions = {name: res["records"][0]["actions"] for name, (res, _) in runs.items()}
    assert actions["oracle"] != actions["random"] and actions["checkpoint"] != actions["random"]


def test_paired_comparison_of_two_runs_on_the_same_episodes(runs, tmp_path, capsys):
    """wmplan-compare: B - A per episode, a seeded bootstrap interval, and a refusal to pair
    runs that planned different episodes."""
    (oracle, oracle_dir), (random, random_dir) = runs["oracle"], runs["random"]
    result = paired_difference(oracle, random, resamples=2000, seed=3)
    diff = np.array([b["final_distance"] - a["final_distance"] for a, b in zip(oracle["records"], random["records"])])
    assert result["difference"] == pytest.approx(diff.mean()) and result["episodes"] == EPISODES
    assert result["mean_b"] - result["mean_a"] == pytest.approx(diff.mean())
    low, high = result["ci95"]
    assert diff.min() <= low <= diff.mean() <= high <= diff.max()  # bootstrap means lie within the episodes' range
    assert (result["b_lower"], result["b_higher"], result["level"]) == ((diff < 0).sum(), (diff > 0).sum(), (diff == 0).sum())
    assert paired_difference(oracle, random, resamples=2000, seed=3) == result  # seeded
    same = paired_difference(oracle, oracle, metric="success")
    assert same["ci95"] == [0.0, 0.0] and same["level"] == EPISODES
    compare_main([str(oracle_dir), str(random_dir / "results.json"), "--json", "--resamples", "2000", "--seed", "3"])
    assert json.loads(capsys.readouterr().out) == result
    other = evaluate(plan_config("random", tmp_path, "seed=6"))
    with pytest.raises(ValueError, match="episode 0 has another start_state in each run .seeds 5 and 6."):
        paired_difference(oracle, other)
    with pytest.raises(ValueError, match=f"different episodes: {EPISODES} and 2"):
        paired_difference(oracle, {**random, "records": random["records"][:2]})
    with pytest.raises(ValueError, match="needs 2 or more episodes per run, got 1 and 1"):
        paired_difference({**oracle, "records": oracle["records"][:1]}, {**random, "records": random["records"][:1]})
    old = {**random, "records": [{k: v for k, v in r.items() if k != "goal_state"} for r in random["records"]]}
    with pytest.raises(ValueError, match="the second run's records lack goal_state"):
        paired_difference(oracle, old)
    with pytest.raises(ValueError, match="metric must be one of"):
        paired_difference(oracle, random, metric="reward")
    with pytest.raises(SystemExit) as stop:
        compare_main([str(oracle_dir), str(tmp_path / "missing")])
    assert stop.value.code == 2 and "wmplan-compare: error: no wmplan-plan results at" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["oracle", "checkpoint"])
def test_same_seed_same_results(runs, name, checkpoint, tmp_path):
    results, _ = runs[name]
    again = evaluate(plan_config(checkpoint if name == "checkpoint" else name, tmp_path))
    assert deterministic_part(json.loads(json.dumps(again))) == deterministic_part(results)
    other = evaluate(plan_config(checkpoint if name == "checkpoint" else name, tmp_path / "other", "seed=6"))
    assert other["records"][0]["start_state"] != results["records"][0]["start_state"]


def test_noop_baseline_executes_zero_actions(runs, tmp_path):
    """world_model=noop: the do-nothing baseline, on the same episodes as the others."""
    noop = evaluate(plan_config("noop", tmp_path))
    assert all(not np.any(r["actions"]) for r in noop["records"])
    assert [r["start_state"] for r in noop["records"]] == [r["start_state"] for r in runs["random"][0]["records"]]
    assert noop["checkpoint"] == {"path": None, "sha256": None}


def test_checkpoint_from_another_env_is_refused(checkpoint, tmp_path):
    cfg = plan_config(checkpoint, tmp_path, "env=pusht")
    with pytest.raises(ValueError, match="trained with env id wmplan/Wall-v0, but the planning env has wmplan/PushT-v0"):
        evaluate(cfg)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("override, name", [("env.resolution=32", "resolution"), ("env.frameskip=2", "frameskip")])
def test_checkpoint_with_other_env_settings_is_refused(checkpoint, tmp_path, override, name):
    with pytest.raises(ValueError, match=f"trained with {name}"):
        evaluate(plan_config(checkpoint, tmp_path, override))
    assert not (tmp_path / "results.json").exists()


def test_frame_weights_that_do_not_fit_the_plans_are_refused(checkpoint, tmp_path):
    """Budget 10 env steps = 2 planner steps; with horizon 2 and execute_k 1 the last plan is 1 step."""
    with pytest.raises(ValueError, match=r"frame_weights has 2 weights, but the plans are \[1, 2\] steps long"):
        evaluate(plan_config(checkpoint, tmp_path, "objective.frame_weights=[1.0,1.0]", "execute_k=1"))
    with pytest.raises(ValueError, match="frame_weights has 3 weights"):
        evaluate(plan_config(checkpoint, tmp_path, "objective.frame_weights=[1.0,1.0,1.0]"))
    assert not (tmp_path / "results.json").exists()
    results = evaluate(plan_config(checkpoint, tmp_path, "objective.frame_weights=[1.0,1.0]", "execute_k=1",
                                   "budget_horizon=false"))
    assert len(results["records"][0]["plan_times"]) == 2


def test_sharded_evaluation_merges_to_the_unsharded_results(runs, checkpoint, tmp_path):
    """Shards 0/2 and 1/2 of the checkpoint run, merged, equal the one-job run bit for bit."""
    results, _ = runs["checkpoint"]
    for i in (1, 0):
        shard = evaluate(plan_config(checkpoint, tmp_path, f"episodes_shard={i}/2"))
        assert shard["summary"].endswith(f"{len(shard['records'])} episodes") and f"shard {i}/2" in shard["summary"]
    assert [r["episode"] for r in json.loads((tmp_path / "results.shard-0-of-2.json").read_text())["records"]] == [0, 1]
    assert len(linked_files(tmp_path / "report.shard-1-of-2.html")) == 3  # the plots; episode 2 has no video (videos=2)
    with pytest.raises(ValueError, match=r"shards \[1, 2\] of 3 have no results yet"):
        evaluate(plan_config(checkpoint, tmp_path / "three", "episodes_shard=0/3"))
        merge_shards(tmp_path / "three")
    merged = merge_shards(tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["records"] == merged["records"]
    same = deterministic_part(json.loads(json.dumps(merged)))
    assert len(same.pop("shards")) == 2 and same == deterministic_part(results)
    assert [r["episode"] for r in merged["records"]] == list(range(EPISODES))
    assert merged["config"]["episodes_shard"] is None
    page = (tmp_path / "report.html").read_text()
    assert all(f"videos/{p.name}" in page for p in (tmp_path / "videos").iterdir())
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == sorted(p.name for p in (runs["checkpoint"][1] / "videos").iterdir())


def test_shards_of_different_evaluations_are_not_merged(tmp_path):
    evaluate(plan_config("oracle", tmp_path, "episodes_shard=0/2"))
    evaluate(plan_config("oracle", tmp_path, "episodes_shard=1/2", "planner.iterations=3"))
    with pytest.raises(ValueError, match="results.shard-1-of-2.json was run with other settings than .*: planner"):
        merge_shards(tmp_path)
    assert not (tmp_path / "results.json").exists()
    with pytest.raises(FileNotFoundError, match="no results.shard"):
        merge_shards(tmp_path / "empty")


@pytest.mark.parametrize("shard", ["2/2", "1", "a/b", "0/4"])
def test_bad_shards_are_refused(shard, tmp_path):
    with pytest.raises(ValueError, match="episodes_shard"):  # 0/4: more shards than the 3 episodes
        evaluate(plan_config("oracle", tmp_path, f"episodes_shard={shard}"))


def test_multirun_over_shards_then_merge_cli(tmp_path):
    """The command-line path: one Hydra multirun over the shards (the local launcher runs
    them in turn; a cluster launcher would run them as jobs), then wmplan-plan-merge."""
    overrides = [f"out_dir={tmp_path}", f"env.resolution={RESOLUTION}", "episodes=3", f"budget_env_steps={BUDGET}",
                 f"horizon={HORIZON}", "planner.num_samples=8", "planner.topk=2", "planner.iterations=2",
                 "progress=false", "videos=0"]
    run = functools.partial(subprocess.run, capture_output=True, text=True, cwd=tmp_path)
    sweep = run([sys.executable, "-m", "wmplan.planners.evaluate", "-m", "episodes_shard=0/2,1/2", *overrides])
    assert sweep.returncode == 0, sweep.stderr
    merge = run([sys.executable, "-m", "wmplan.planners.shards", str(tmp_path)])
    assert merge.returncode == 0 and merge.stdout.startswith("wall (2 shards): success"), merge.stderr
    one = evaluate(compose_config("plan", [o.replace(str(tmp_path), str(tmp_path / "one")) for o in overrides]))
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["records"][2]["actions"] == one["records"][2]["actions"]
    missing = run([sys.executable, "-m", "wmplan.planners.shards", str(tmp_path / "nothing")])
    assert missing.returncode == 2 and "wmplan-plan-merge: error: no results.shard" in missing.stderr


def replay(env, start, actions):
    """The real observations at ``start`` and after each planner action."""
    out = [observe(env, start)]
    for action in actions:
        obs, *_, info = env.step(action)
        out.append({**obs, "state": info["state"]})
    return out


def test_predicted_panel_is_the_decoded_rollout_of_the_executed_plan(checkpoint, tmp_path):
    """Two replans of two planner steps each, predictions kept for episode 1 only: they are the
    checkpoint's decoded rollout of the executed actions from the real context, with the
    replan's per-episode seeds; and recording them changes no executed action."""
    cfg = plan_config(checkpoint, tmp_path)
    env = make(cfg.env.id, frameskip=FRAMESKIP, resolution=RESOLUTION)
    encode_fn, make_rollout_fn, objective, wm = model_and_objective(cfg, env)
    episodes, seed, steps = sample_episodes(env, 2, seed=5), 5, 2 * HORIZON * FRAMESKIP

    def mpc(**kw):
        return run_mpc(env, build_planner(cfg.planner), objective, encode_fn, make_rollout_fn, episodes,
                       budget_env_steps=steps, horizon=HORIZON, history=wm.context_frames, seed=seed, **kw)

    plain, recorded = mpc(), mpc(decode_fn=wm.decode, predict_episodes={1})
    for a, b in zip(plain, recorded):
        np.testing.assert_array_equal(np.stack(a.actions), np.stack(b.actions))
        assert a.distances == b.distances
    assert len(recorded[0].predicted_frames) == 0 and len(recorded[1].predicted_frames) == 2 * HORIZON
    actions = torch.tensor(np.stack([np.stack(r.actions) for r in recorded]))  # [B, 4, Aw]
    observed = [replay(env, start, r.actions) for (start, _), r in zip(episodes, recorded)]
    for replan, t in enumerate(range(0, 2 * HORIZON, HORIZON), start=1):
        obs_steps = [obs_batch([o[i] for o in observed]) for i in range(t + 1)]
        context = make_context(encode_fn, obs_steps, list(actions[:, :t].unbind(1)), wm.context_frames, actions.shape[-1])
        seeds = [stream_seed(stream_seed(seed, i), replan) for i in (0, 1)]
        pred = wm.rollout(context, actions[:, None, t:t + HORIZON], seed=seeds)["latents"][:, 0]
        expected = wm.decode(pred)[1].numpy()
        np.testing.assert_array_equal(np.stack(recorded[1].predicted_frames[t:t + HORIZON]), expected)
    assert episode_video(recorded[1]).shape == (2 * HORIZON + 1, 24 + 256 + 24, 4 + 3 * 260, 3)


def test_checkpoints_record_their_training_actions_std_for_sigma_units_data(checkpoint, wall_data, tmp_path):
    from wmplan.checkpoint import read_checkpoint
    from wmplan.data.dataset import ClipDataset
    from wmplan.rollout import WorldModel

    recorded = read_checkpoint(checkpoint)["wmplan_config"]["data"]  # the conftest run: val_fraction 0.3
    mean, std = ClipDataset(wall_data, 2, 1, "train", val_fraction=0.3, seed=0).action_stats()
    np.testing.assert_allclose(recorded["action_mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(recorded["action_std"], std, rtol=1e-6)
    np.testing.assert_array_equal(WorldModel.from_checkpoint(checkpoint).action_std, np.float32(recorded["action_std"]))
    results = evaluate(plan_config(checkpoint, tmp_path / "data", "sigma_units=data", "videos=0", "report=false"))
    assert results["config"]["sigma_units"] == "data" and results["episodes"] == EPISODES
    with pytest.raises(ValueError, match="pretrained:wall does not record its training actions' std"):
        evaluate(plan_config("pretrained:wall", tmp_path / "old", "sigma_units=data", "env.resolution=64"))
