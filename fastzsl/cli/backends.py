"""``fastzsl backends``: which kernel backends load here."""
from __future__ import annotations


def add_parser(subparsers):
    p = subparsers.add_parser("backends", help="list the kernel backends and whether they load")
    p.set_defaults(handler=run)


def run(args) -> int:
    from fastzsl.backends import backend_status

    for name, reason in backend_status().items():
        print(f"{name:8s} {'unavailable: ' + reason if reason else 'available'}")
    return 0
