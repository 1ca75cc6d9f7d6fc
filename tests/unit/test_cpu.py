import pytest

from exporter.contract import Context, ParseError, Paths
from collectors.cpu import CpuCollector, parse_proc_stat
from tests.helpers import FIXTURES


def test_parse_keeps_cpu_numbers_when_a_cpu_is_offline():
    cpus = parse_proc_stat((FIXTURES / "procfs/stat").read_text())
    assert [cpu for cpu, _ in cpus] == ["0", "1", "3"]
    assert cpus[2][1]["steal"] == 22151
    assert cpus[0][1] == {"user": 1178912, "nice": 710, "system": 398412, "idle": 24047215,
                          "iowait": 18901, "irq": 0, "softirq": 49875, "steal": 22301}


def test_parse_old_kernel_without_steal_column():
    cpus = parse_proc_stat("cpu  1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7\n")
    assert "steal" not in cpus[0][1] and cpus[0][1]["softirq"] == 7


@pytest.mark.parametrize("text", [
    "cpu0 1 2 x 4 5 6 7 8\n",      # garbage value
    "cpu0 1 2\n",                  # truncated line
    "cpuX 1 2 3 4 5 6 7 8\n",      # not a cpu number
    "intr 1 2 3\n",                # no per-CPU lines
    "",
])
def test_parse_rejects_malformed_input(text):
    with pytest.raises(ParseError):
        parse_proc_stat(text, "stat")


def test_collect_converts_ticks_to_seconds_and_never_goes_backwards(tmp_path):
    (tmp_path / "stat").write_text("cpu  0 0 0 0 0 0 0 0\ncpu0 100 0 0 0 0 0 0 500\n")
    collector = CpuCollector(Context(paths=Paths(procfs=str(tmp_path))))
    hz = collector._user_hz

    def steal():
        families = {f.name: f for f in collector.collect()}
        sample = next(s for s in families["netstack_cpu_seconds"].samples if s.labels["mode"] == "steal")
        return sample.value, families["netstack_cpu_backwards_jumps"].samples[0].value

    assert steal() == (500 / hz, 0)
    # A hypervisor bug: steal goes backwards. The exported counter holds and the regression is counted.
    (tmp_path / "stat").write_text("cpu  0 0 0 0 0 0 0 0\ncpu0 100 0 0 0 0 0 0 400\n")
    assert steal() == (500 / hz, 1)
    (tmp_path / "stat").write_text("cpu  0 0 0 0 0 0 0 0\ncpu0 100 0 0 0 0 0 0 900\n")
    assert steal() == (900 / hz, 1)
