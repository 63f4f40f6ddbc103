"""Entry point: python -m rlengine.main recipe=NAME [key=value ...]

Recipes are YAML files in recipes/ composed by Hydra over the schema in rlengine/config.py; every
key can be overridden on the command line with Hydra's override grammar.  The config is checked
completely (keys, types, combinations) before Ray or any actor starts.
"""
from __future__ import annotations

import sys

from rlengine.compose import load_config, recipes_dir
from rlengine.errors import ConfigError

USAGE = """usage: python -m rlengine.main [recipe=NAME] [key=value ...] [--cfg] [--help]

  recipe=NAME   a recipe in recipes/ (default grpo_tiny); available: {recipes}
  key=value     override any key, e.g. trainer.total_steps=10 algorithm.group_size=4
  --cfg         print the composed, validated config and exit (a pipeline: every stage of every round)

  resume=auto (default) continues the newest complete checkpoint of run_dir (or, without run_dir,
  of the newest unfinished run of this recipe with the same config); resume=never; resume=PATH.
  Exit codes: 0 done; 2 bad config, data or resources (nothing started); 75 interrupted
  (SIGTERM/SIGINT or a trainer rank lost): rerun the same command to resume.
"""


def parse_argv(argv: list[str]) -> tuple[str, list[str], set[str]]:
    recipe, overrides, flags = "grpo_tiny", [], set()
    for arg in argv:
        if arg.startswith("-"):
            flags.add(arg)
        elif arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    return recipe, overrides, flags


def main(argv: list[str] | None = None) -> int:
    recipe, overrides, flags = parse_argv(sys.argv[1:] if argv is None else argv)
    unknown = flags - {"--help", "-h", "--cfg"}
    if unknown:
        print(f"error: unknown option(s) {sorted(unknown)}; see --help", file=sys.stderr)
        return 2
    if "--help" in flags or "-h" in flags:
        names = ", ".join(sorted(p.stem for p in recipes_dir().glob("*.yaml")))
        print(USAGE.format(recipes=names))
        return 0
    from rlengine.pipeline_spec import is_pipeline

    recipe_file = recipes_dir() / f"{recipe}.yaml"
    if is_pipeline(recipe_file):  # stages chained by their outputs: rlengine/pipeline.py
        from rlengine import pipeline

        return pipeline.main(recipe_file, overrides, print_only="--cfg" in flags)
    try:
        cfg, plan = load_config(recipe, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "--cfg" in flags:
        import yaml

        from rlengine.config import to_dict

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        print(f"# plan: {plan}")
        from rlengine.placement import describe_plan

        print(describe_plan(cfg, plan))
        return 0
    from rlengine import preflight

    try:
        preflight.check(cfg, plan)  # model and data paths, and whether each role fits, before Ray starts
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from rlengine.job import run

    return exit_code(lambda: run(cfg, plan))


def exit_code(job, failures: tuple[type[Exception], ...] = ()) -> int:
    """Run `job()` and map how it ended to the exit codes of USAGE: 2 for what the user can fix
    before anything runs (config, data, resources), 75 for an interrupted run, 1 for a failed weight
    sync or any of `failures`."""
    from rlengine.data import DataError
    from rlengine.job import RunInterrupted
    from rlengine.placement import PlacementError
    from rlengine.weight_sync import WeightSyncError

    try:
        job()
    except (ConfigError, DataError, FileNotFoundError, PlacementError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return RunInterrupted.exit_code
    except WeightSyncError as e:
        print(f"error: weight sync: {e}", file=sys.stderr)
        return 1
    except failures as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
