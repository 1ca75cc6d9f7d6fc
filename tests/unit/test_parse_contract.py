"""The malformed inputs issue 11 (items 4 and 5) found, one by one: each parser or decoder raises
its own error (ParseError; ValueError for a command-line value), never the exception Python
raised before (ValueError from int()'s digit limit, OSError from inet_ntoa, KeyError, struct.error,
OverflowError), and does so fast (the print_symbolic and CPU-list cases took 4 s and 8 s)."""

from __future__ import annotations

import struct
import time

import pytest

from collectors import common, ebpf_base, ebpf_loader, ebpf_softirq, ipvs, netlink, softirq
from collectors import overlay_rtnl as rtnl
from exporter import cli
from exporter.contract import ParseError
from tests.helpers import FIXTURES
from tests.unit.test_ipvs import FAMILY, dest_attrs, encode, service_attrs

IPVS_HEADER = (
    "IP Virtual Server version 1.2.1 (size=4096)\n"
    "Prot LocalAddress:Port Scheduler Flags\n"
    "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
)
NLMSG_ERROR_INT_MIN = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -(2**31)) + b"\0" * 16


def softnet_with(value: str) -> str:
    lines = (FIXTURES / "procfs/net/softnet_stat").read_text().splitlines()
    fields = lines[0].split()
    fields[1] = value
    return "\n".join([" ".join(fields), *lines[1:]]) + "\n"


def service_without(attr: str) -> bytes:
    return encode(1, "IPVS_CMD_ATTR_SERVICE", [a for a in service_attrs("10.96.0.1", 443) if a[0] != attr], 1)


def a_service() -> ipvs.Service:
    return ipvs.decode_services(
        [encode(1, "IPVS_CMD_ATTR_SERVICE", service_attrs("10.96.0.1", 443), 1)], FAMILY
    )[0]


def dest_without(attr: str) -> bytes:
    return encode(5, "IPVS_CMD_ATTR_DEST", [a for a in dest_attrs("198.18.0.11", 6443) if a[0] != attr], 1)


def nlmsg_error_of(size: int) -> bytes:
    return struct.pack("=IHHII", size, 2, 0, 1, 0) + b"\0" * (size - 16)


CASES = {
    "softnet_stat: a 5,000-digit hex value": lambda: softirq.parse_softnet_stat(softnet_with("f" * 5000)),
    "softirqs: a 5,000-digit count": lambda: softirq.parse_softirqs("CPU0\nNET_RX: " + "9" * 5000 + "\n"),
    "ip_vs: an address of 3 bytes (inet_ntoa)": lambda: ipvs.parse_ip_vs(
        IPVS_HEADER + "TCP  0A6000:0050 rr \n"
    ),
    "ip_vs: a bad IPv6 address (inet_pton)": lambda: ipvs.parse_ip_vs(
        IPVS_HEADER + "TCP  [zz::1]:0050 rr \n"
    ),
    "decode_services: no protocol attribute": lambda: ipvs.decode_services(
        [service_without("IPVS_SVC_ATTR_PROTOCOL")], FAMILY
    ),
    "decode_services: a cut message": lambda: ipvs.decode_services(
        [encode(1, "IPVS_CMD_ATTR_SERVICE", service_attrs("10.96.0.1", 443), 1)[:-6]], FAMILY
    ),
    "decode_services: errno INT_MIN": lambda: ipvs.decode_services([NLMSG_ERROR_INT_MIN], FAMILY),
    "decode_dests: no port attribute": lambda: ipvs.decode_dests(
        [dest_without("IPVS_DEST_ATTR_PORT")], FAMILY, a_service(), True
    ),
    "decode_dests: errno INT_MIN": lambda: ipvs.decode_dests(
        [NLMSG_ERROR_INT_MIN], FAMILY, a_service(), True
    ),
    **{
        f"netlink.error_code: NLMSG_ERROR of {n} bytes": (
            lambda n=n: netlink.error_code(nlmsg_error_of(n), 0)
        )
        for n in (16, 17, 18, 19)
    },
    "parse_addr: shorter than ifaddrmsg": lambda: rtnl.parse_addr(b"\x14" + b"\0" * 19),
    "parse_format: an offset of 5,000 digits": lambda: ebpf_loader.parse_format(
        "name: x\nformat:\n\tfield:int a;\toffset:" + "9" * 5000 + ';\tsize:4;\tsigned:1;\nprint fmt: ""\n'
    ),
    "effective_capabilities: 5,000 hex digits": lambda: ebpf_base.effective_capabilities(
        "CapEff:\t" + "f" * 5000 + "\n"
    ),
    "print_symbolic: '{' + 2,000 spaces + 'x'": lambda: ebpf_loader.print_symbolic(
        ebpf_loader.TracepointFormat("x", {}, "__print_symbolic(REC->reason, {" + " " * 2000 + "x"), "reason"
    ),
    "print_symbolic: '{' + 200,000 spaces + 'x'": lambda: ebpf_loader.print_symbolic(
        ebpf_loader.TracepointFormat("x", {}, "__print_symbolic(REC->reason, {" + " " * 200_000 + "x)"),
        "reason",
    ),
    "ebpf_softirq.parse_cpu_list('0-100000000')": lambda: ebpf_softirq.parse_cpu_list("0-100000000"),
    "parse_cpu_list: 1,000 ranges of 65,000 CPUs": lambda: common.parse_cpu_list(
        ",".join(["0-65000"] * 1000)
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_is_a_parse_error_fast(case):
    started = time.perf_counter()
    with pytest.raises(ParseError):
        CASES[case]()
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("text", ["9" * 400 + "y", "9" * 13 + "s", "9" * 5000 + "ms"])
def test_a_huge_duration_is_a_value_error_not_an_overflow(text):
    with pytest.raises(ValueError, match="too large"):
        cli.parse_duration(text)
