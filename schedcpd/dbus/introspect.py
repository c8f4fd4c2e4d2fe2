"""Introspection data generated from the API declarations.

``python -m schedcpd.dbus.introspect`` prints the Manager interface XML that
is shipped as ``etc/dbus-1/interfaces/org.schedcp.Control1.Manager.xml``; a
test checks the file equals what the live daemon introspects.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

from dbus_fast.constants import ArgDirection, PropertyAccess
from dbus_fast.introspection import Arg, Interface, Method, Node, Property, Signal

from schedcpd.api import MethodSpec, PropertySpec, SignalSpec
from schedcpd.const import MANAGER_INTERFACE

_STANDARD = {
    "org.freedesktop.DBus.Introspectable",
    "org.freedesktop.DBus.Peer",
    "org.freedesktop.DBus.Properties",
}


def manager_interface(
    methods: list[MethodSpec], props: list[PropertySpec], signals: list[SignalSpec]
) -> Interface:
    """The Manager interface described by the declarations."""
    return Interface(
        MANAGER_INTERFACE,
        methods=[
            Method(
                m.name,
                in_args=[Arg(sig, ArgDirection.IN, n) for n, sig in m.in_args],
                out_args=[Arg(sig, ArgDirection.OUT, n) for n, sig in m.out_args],
            )
            for m in methods
        ],
        signals=[Signal(s.name, args=[Arg(sig, name=n) for n, sig in s.args]) for s in signals],
        properties=[Property(p.name, p.signature, PropertyAccess.READ) for p in props],
    )


def object_xml(interface: Interface) -> str:
    """Introspection XML of the manager object (standard interfaces included)."""
    standard = [i for i in Node.default().interfaces if i.name in _STANDARD]
    return Node(None, is_root=True, interfaces=[*standard, interface]).tostring()


def children_xml(children: list[str]) -> str:
    """Introspection XML of an ancestor path that only has child nodes."""
    node = Node(None, is_root=True, interfaces=[])
    node.nodes = [Node(c, is_root=False) for c in children]
    return node.tostring()


def interface_file_xml(interface: Interface) -> str:
    """The shipped interface file: one ``<node>`` holding the Manager interface."""
    root = ET.Element("node")
    root.append(interface.to_xml())
    ET.indent(root, space="  ")
    doctype = (
        '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n'
    )
    return doctype + ET.tostring(root, encoding="unicode") + "\n"


def main() -> None:
    """Print the interface file for the daemon's Manager API."""
    from schedcpd.api import collect
    from schedcpd.manager import Manager

    sys.stdout.write(interface_file_xml(manager_interface(*collect(Manager))))


if __name__ == "__main__":
    main()
