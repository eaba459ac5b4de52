"""The capacity planner (capacity/): the 70B worked example, the memory arithmetic, first-fit
decreasing packing under the golden rule, the input files and the ``plan-capacity`` command."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from capacity.inputs import load_inputs_file, read_adapter_dir
from capacity.planner import (DEFAULT_ARCHETYPES, Archetype, CapacityInputs, DoesNotFit,
                              pack_chains, plan)

pytestmark = pytest.mark.pure


def _70b_example(**overrides) -> CapacityInputs:
    """The 70B worked example: 4-bit base "21 GB", engine 1.6 GB, 7 x 200 MB adapters per
    archetype, 24 GB GPU, no KV cache in the arithmetic; 10,000 NPCs x 0.125 actions/s x 7
    inferences per action at 50 inferences/s per server."""
    base = CapacityInputs(
        archetypes=tuple(Archetype(n, 7, 200.0) for n in DEFAULT_ARCHETYPES), base_model_gb=21.0,
        engine_overhead_gb=1.6, kv_cache_gb_per_npc=0.0, gpu_memory_gb=24.0, target_npcs=10_000,
        actions_per_npc_s=0.125, inferences_per_action=7, server_inferences_per_s=50)
    return replace(base, **overrides)


def test_70b_worked_example_needs_175_servers():
    p = plan(_70b_example())
    assert p.inferences_per_s == 8750
    assert p.servers_for_throughput_only == 175
    assert p.servers_needed == 175
    assert p.binding == "throughput"
    # 21 + 1.6 leave 1.4 GB: exactly one 7 x 200 MB chain per server, so five layouts of
    # 35 servers each (1.4 GB holds 7 adapters of 200 MB, not 35)
    assert [g.archetypes for g in p.groups] == [[n] for n in sorted(DEFAULT_ARCHETYPES)]
    assert [g.servers for g in p.groups] == [35] * 5
    assert all(g.used_gb == pytest.approx(24.0) for g in p.groups)
    assert p.assignment()["ghoul"] == [1, 35] and p.assignment()["zombie"] == [141, 175]


def test_defaults_are_7b_memory_and_default_traffic():
    p = plan(CapacityInputs())
    assert p.inputs["base_gb"] == pytest.approx(3.5)  # 7B x 4 bits / 8
    assert len(p.groups) == 1 and sorted(p.groups[0].archetypes) == sorted(DEFAULT_ARCHETYPES)
    g = p.groups[0]
    assert g.adapters_gb == pytest.approx(3.5)  # 35 adapters x 100 MB
    assert g.kv_capacity_gb == pytest.approx(24 - 3.5 - 1.6 - 3.5)
    assert g.npcs_per_server_memory == 154  # 15.4 GB / 0.1 GB
    assert g.npcs_per_server_throughput == pytest.approx(50 / 0.875)
    assert p.servers_needed == 175 and p.binding == "throughput"


def test_memory_binds_when_the_kv_cache_is_large():
    p = plan(CapacityInputs(kv_cache_gb_per_npc=0.5))  # 15.4 GB / 0.5 -> 30 NPCs per server
    g = p.groups[0]
    assert g.npcs_per_server_memory == 30
    assert g.servers_for_memory == 334 and g.servers_for_throughput == 175  # ceil(10000/30)
    assert p.servers_needed == 334 and p.binding == "memory"


def test_base_model_memory_from_parameters_and_bits():
    assert CapacityInputs(base_params_b=70, quant_bits=4).base_gb == pytest.approx(35.0)
    assert CapacityInputs(base_params_b=7, quant_bits=16).base_gb == pytest.approx(14.0)
    assert CapacityInputs(base_model_gb=21.0, base_params_b=70).base_gb == 21.0
    assert Archetype("x", 7, 200).chain_gb == pytest.approx(1.4)
    assert Archetype("x", 2, 0, adapter_sizes_mb=(100.0, 50.5)).chain_gb == pytest.approx(0.1505)


def test_ffd_never_splits_a_chain_and_packs_largest_first():
    chains = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 3.0, "e": 2.0, "f": 1.0}
    layouts = pack_chains(chains, 8.0)
    assert layouts == [["a", "c"], ["b", "d", "f"], ["e"]]
    for name in chains:  # each chain in exactly one layout, whole
        assert sum(name in lay for lay in layouts) == 1
    for lay in layouts:
        assert sum(chains[n] for n in lay) <= 8.0


def test_ffd_packing_through_plan_respects_gpu_memory():
    archs = tuple(Archetype(n, 7, mb, share=0.25) for n, mb in
                  (("vampire", 900), ("werewolf", 700), ("zombie", 300), ("lich", 200)))
    p = plan(CapacityInputs(archetypes=archs, gpu_memory_gb=16, base_model_gb=3.5,
                            engine_overhead_gb=1.6, kv_reserve_npcs=10))
    # room for adapters = 16 - 3.5 - 1.6 - 10 x 0.1 = 9.9 GB; chains 6.3, 4.9, 2.1, 1.4 GB
    assert [g.archetypes for g in p.groups] == [["vampire", "zombie", "lich"], ["werewolf"]]
    assert all(g.base_gb + g.engine_gb + g.adapters_gb <= 16 for g in p.groups)
    assert p.groups[0].npcs == 7500 and p.groups[1].npcs == 2500
    assert p.servers_needed == sum(g.servers for g in p.groups)
    assert p.groups[1].first_server == p.groups[0].servers + 1


def test_an_archetype_too_big_for_one_gpu_is_a_clear_error():
    archs = (Archetype("vampire", 7, 200), Archetype("lich", 7, 3000))
    with pytest.raises(DoesNotFit, match=r"'lich'.*21\.000 GB.*golden rule"):
        plan(CapacityInputs(archetypes=archs))
    with pytest.raises(DoesNotFit, match="base model 35.000 GB"):
        plan(CapacityInputs(base_params_b=70, quant_bits=4))
    # the 70B example leaves no room for one NPC's KV cache (0.1 GB/NPC, the default)
    with pytest.raises(DoesNotFit, match="'ghoul'"):
        plan(_70b_example(kv_cache_gb_per_npc=0.1))


def test_invalid_inputs_are_value_errors():
    with pytest.raises(ValueError, match="sum to 1.2"):
        plan(CapacityInputs(archetypes=(Archetype("a", share=0.6), Archetype("b", share=0.6))))
    with pytest.raises(ValueError, match="not unique"):
        plan(CapacityInputs(archetypes=(Archetype("a"), Archetype("a"))))
    with pytest.raises(ValueError, match="server_inferences_per_s"):
        plan(CapacityInputs(server_inferences_per_s=0))


def test_zero_share_archetype_still_gets_a_server():
    archs = (Archetype("vampire", 7, 100, share=1.0), Archetype("lich", 7, 100, share=0.0))
    p = plan(CapacityInputs(archetypes=archs, gpu_memory_gb=6, kv_reserve_npcs=0))
    assert [g.archetypes for g in p.groups] == [["lich"], ["vampire"]]  # 0.9 GB room each
    assert p.groups[0].npcs == 0 and p.groups[0].servers == 1  # hosted even with no NPCs


def test_inputs_file_yaml_and_json(tmp_path):
    y = tmp_path / "a.yaml"
    y.write_text("archetypes:\n  - {name: vampire, adapters: 7, adapter_size_mb: 200, share: 0.5}\n"
                 "  - {name: zombie}\ngpu_memory_gb: 40\n")
    archs, other = load_inputs_file(y)
    assert archs == [Archetype("vampire", 7, 200.0, 0.5), Archetype("zombie", 7, 200.0, None)]
    assert other == {"gpu_memory_gb": 40}
    j = tmp_path / "a.json"
    j.write_text(json.dumps({"archetypes": [{"name": "x"}], "gpu": 3}))
    with pytest.raises(ValueError, match="unknown keys \\['gpu'\\]"):
        load_inputs_file(j)


def _peft_adapter(folder, n_floats: int) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16}))
    save_file({"base_model.lora_A.weight": np.zeros(n_floats, dtype=np.float32)},
              str(folder / "adapter_model.safetensors"))


def test_adapter_sizes_read_from_a_peft_directory(tmp_path):
    for task in ("personality", "dialogue_style"):
        _peft_adapter(tmp_path / "vampire" / task, 250_000)  # 1 MB of weights each
    _peft_adapter(tmp_path / "zombie" / "personality", 500_000)
    (tmp_path / "notes").mkdir()  # no adapters: ignored
    archs = read_adapter_dir(tmp_path, {"vampire": 0.75})
    assert [a.name for a in archs] == ["vampire", "zombie"]
    vamp = archs[0]
    assert vamp.adapter_count == 2 and vamp.share == 0.75
    assert vamp.chain_gb == pytest.approx(0.002, rel=0.01)  # file sizes incl. a small header
    assert archs[1].chain_gb == pytest.approx(0.002, rel=0.01)
    with pytest.raises(ValueError, match="no archetype folders"):
        read_adapter_dir(tmp_path / "notes")


def test_plan_capacity_command():
    from workers.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["plan-capacity", "--base-model-gb", "21", "--adapter-size-mb", "200",
                              "--kv-cache-gb-per-npc", "0", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["fits"] is True and out["servers_needed"] == 175
    assert out["assignment"]["vampire"] == [71, 105]
    res = runner.invoke(cli, ["plan-capacity"])
    assert res.exit_code == 0, res.output
    assert "servers needed: 175" in res.output and "throughput" in res.output
    res = runner.invoke(cli, ["plan-capacity", "--adapter-size-mb", "3000"])
    assert res.exit_code == 1
    assert "chains do not fit" in res.output and "golden rule" in res.output
