"""The placement plan `--cfg` prints: every role's actors, bundles, nodes, colocation and totals."""
import yaml

from rlengine.main import load_config, main
from rlengine.placement import describe_plan


def test_cfg_names_every_role_of_grpo_qwen_math_with_its_gpus(capsys):
    assert main(["recipe=grpo_qwen_math", "--cfg"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["recipe"] == "grpo_qwen_math"  # the plan lines are YAML comments
    plan = out[out.index("# placement"):].splitlines()
    # The recipe (hybrid): 8 trainer ranks of 1 GPU and 4 CPUs, each sharing its bundle with one
    # rollout engine (TP 1); the reference inside the ranks: one 8-GPU node.
    assert plan[1:] == [
        "#   trainer: 8 actors x {CPU: 4, GPU: 1}, 8 GPUs; STRICT_PACK on 1 node",
        "#   rollout: 8 actors colocated (resources.colocate): worker i shares trainer rank i's bundle, "
        "{CPU: 2, GPU: 0.5} each; no devices of its own",
        "#   reference: inside the trainer ranks (reference.placement=trainer): no actors or devices of its own",
        "# required: 8 GPUs, 32 CPUs",
    ]
    assert "resources.device=cuda" in plan[0]


def test_plan_with_tensor_parallel_spread_trainers_and_custom_resources():
    cfg, plan = load_config("grpo_qwen_math", ["rollout.num_workers=2", "rollout.tensor_parallel_size=2",
                                               "resources.colocate=false", "trainer.world_size=4",
                                               "reference.placement=separate", "+resources.role_nodes.trainer=2",
                                               "+resources.role_resources.reference.big_mem=1"])
    lines = describe_plan(cfg, plan).splitlines()
    assert lines[1] == "#   trainer: 4 actors x {CPU: 4, GPU: 1}, 4 GPUs; PACK over 2 nodes (resources.role_nodes)"
    # gpus_per_rollout 1 x TP 2 = 2 GPUs per engine, 2 engines
    assert lines[2] == "#   rollout: 2 actors x {CPU: 4, GPU: 2}, tensor_parallel_size 2, 4 GPUs; STRICT_PACK on 1 node"
    assert lines[3] == "#   reference: 1 actor x {CPU: 4, big_mem: 1, GPU: 1}, 1 GPU; STRICT_PACK on 1 node"
    assert lines[4] == "# required: 9 GPUs, 28 CPUs, 1 big_mem"


def test_plan_colocated_rollout_and_reference_inside_the_trainer():
    cfg, plan = load_config("grpo_tiny", ["resources.colocate=true", "trainer.world_size=2", "rollout.num_workers=2",
                                          "reference.placement=trainer"])
    assert describe_plan(cfg, plan).splitlines()[1:] == [
        "#   trainer: 2 actors x {CPU: 0.25}, 0 GPUs; STRICT_PACK on 1 node",
        "#   rollout: 2 actors colocated (resources.colocate): worker i shares trainer rank i's bundle, "
        "{CPU: 0.125} each; no devices of its own",
        "#   reference: inside the trainer ranks (reference.placement=trainer): no actors or devices of its own",
        "# required: 0 GPUs, 0.5 CPUs",
    ]
