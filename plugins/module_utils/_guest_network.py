# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PRIVATE: turn a guest's static, NIC-name- or MAC-pinned network configuration into DHCP on any
Ethernet NIC (no Ansible imports).

On EC2 the NIC is not the one vSphere gave the VM (ens192 becomes ens5 or eth0, with another MAC),
and the address comes from DHCP. Every function works on a root directory (``/`` on a live guest,
a mounted image or a test tree otherwise) and returns a plan: a list of ``Change`` objects saying
which file is rewritten or removed and why. ``apply_plan`` writes the plan, keeping the original
files under a backup directory.

Handled: ifupdown (``/etc/network/interfaces`` and ``interfaces.d``), netplan (``/etc/netplan``),
NetworkManager keyfiles (``system-connections``), ifcfg files (``network-scripts``),
systemd-networkd (``.network`` and MAC-pinned ``.link`` files) and persistent-net udev rules.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fnmatch
import os
import re
import shutil
import tempfile

try:
    import yaml

    HAS_YAML = True
except ImportError:  # pragma: no cover - only netplan files need it
    HAS_YAML = False

# Names of physical Ethernet NICs (vSphere: ens192, ens33, eth0; EC2: ens5, eth0, enp0s3 ...).
ETHERNET_NAME = re.compile(r"^(en[a-z0-9]*|eth[0-9]+)$")
IFUPDOWN_LOGICAL = "esxi2ami-dhcp"
IFUPDOWN_MARK = "# esxi2ami: DHCP on any Ethernet NIC (the NIC name differs on EC2)"
IFUPDOWN_BLOCK = "%s\nauto /en*=%s /eth*=%s\niface %s inet dhcp\n" % (
    IFUPDOWN_MARK,
    IFUPDOWN_LOGICAL,
    IFUPDOWN_LOGICAL,
    IFUPDOWN_LOGICAL,
)
NETWORKD_MATCH_NAMES = "en* eth*"
NETPLAN_MATCH_NAME = "e*"


class NetworkConfigError(Exception):
    """A configuration file that cannot be understood; the message names the file and the fix."""


class Change(object):
    """One planned file change: ``action`` is ``rewrite`` or ``remove``; ``after`` is None for removals."""

    def __init__(self, path, action, before, after, reasons):
        self.path = path
        self.action = action
        self.before = before
        self.after = after
        self.reasons = list(reasons)

    def as_dict(self):
        return {"path": self.path, "action": self.action, "reasons": self.reasons}

    def __repr__(self):
        return "Change(%r, %r, %r)" % (self.path, self.action, self.reasons)


def _read(path):
    with open(path, "r", encoding="utf-8", errors="surrogateescape") as handle:
        return handle.read()


def _join(root, rel):
    return os.path.join(root, rel.lstrip("/"))


def _files(root, rel_dir, patterns=("*",)):
    """Regular files of ``rel_dir`` under ``root`` matching any pattern, sorted, as (guest path, host path)."""
    directory = _join(root, rel_dir)
    if not os.path.isdir(directory):
        return []
    out = []
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if os.path.isfile(full) and not os.path.islink(full) and any(fnmatch.fnmatch(name, p) for p in patterns):
            out.append((os.path.join("/", rel_dir.strip("/"), name), full))
    return out


# ----------------------------------------------------------------------------------------------- ifupdown


def _ifupdown_stanzas(text):
    """Split an interfaces(5) file into logical stanzas: list of (kind, words of first line, lines)."""
    stanzas = []
    current = None
    for line in text.splitlines(True):
        words = line.split()
        starts = (
            bool(words)
            and not line[:1].isspace()
            and (
                words[0] in ("iface", "mapping", "auto", "source", "source-directory", "rename")
                or words[0].startswith("allow-")
            )
        )
        if starts:
            current = [words[0], words, [line]]
            stanzas.append(current)
        elif current is not None and current[0] in ("iface", "mapping") and (not words or line[:1].isspace()):
            current[2].append(line)
        else:
            current = None
            stanzas.append(["other", words, [line]])
    return stanzas


def convert_ifupdown(text, has_catch_all):
    """Rewrite one interfaces(5) file. Returns (new text, reasons).

    Every ``iface`` stanza of a physical Ethernet NIC (static or DHCP: both are pinned to a NIC name)
    is removed with its ``auto``/``allow-*`` mentions; the catch-all DHCP stanza is added when the
    file removed something and no file carries it yet.
    """
    reasons = []
    removed_names = set()
    kept = []
    for kind, words, lines in _ifupdown_stanzas(text):
        if kind == "iface" and len(words) >= 4 and ETHERNET_NAME.match(words[1]):
            removed_names.add(words[1])
            reasons.append("iface %s %s %s removed (pinned to the vSphere NIC name)" % (words[1], words[2], words[3]))
            continue
        if kind == "iface" and len(words) >= 4 and words[3] == "static" and words[1] != "lo":
            reasons.append("iface %s is static and not a plain Ethernet NIC: left as is, review it" % words[1])
        kept.append((kind, words, lines))
    out = []
    for kind, words, lines in kept:
        if (kind == "auto" or kind.startswith("allow-")) and removed_names:
            names = [w for w in words[1:] if w not in removed_names]
            if len(names) != len(words) - 1:
                if not names:
                    continue
                lines = [" ".join([words[0]] + names) + "\n"]
        out.extend(lines)
    new = "".join(out)
    if removed_names and not has_catch_all and IFUPDOWN_MARK not in new:
        if new and not new.endswith("\n"):
            new += "\n"
        new += ("\n" if new.strip() else "") + IFUPDOWN_BLOCK
        reasons.append("DHCP on any Ethernet NIC added (auto /en* /eth*)")
    return new, reasons


def plan_ifupdown(root):
    files = [("/etc/network/interfaces", _join(root, "/etc/network/interfaces"))]
    files = [f for f in files if os.path.isfile(f[1])] + _files(root, "/etc/network/interfaces.d")
    texts = [(guest, host, _read(host)) for guest, host in files]
    has_catch_all = any(IFUPDOWN_MARK in text for _g, _h, text in texts)
    plan = []
    for guest, _host, text in texts:
        new, reasons = convert_ifupdown(text, has_catch_all)
        if new != text:
            has_catch_all = has_catch_all or IFUPDOWN_MARK in new
            plan.append(Change(guest, "rewrite", text, new, reasons))
        elif reasons:
            plan.append(Change(guest, "keep", text, text, reasons))
    return plan


# ----------------------------------------------------------------------------------------------- netplan

_NETPLAN_STATIC_KEYS = ("addresses", "gateway4", "gateway6", "routes", "nameservers")


def convert_netplan(text, path="netplan file"):
    """Rewrite one netplan YAML document: every ethernet gets DHCPv4, no static addresses, no MAC or
    name pinning (``match: {name: "e*"}``). Returns (new text, reasons)."""
    if not HAS_YAML:
        raise NetworkConfigError("%s: PyYAML is needed to rewrite netplan files (install python3-yaml)" % path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NetworkConfigError("%s is not valid YAML (%s): fix or remove it" % (path, exc)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("network"), dict):
        return text, []
    ethernets = doc["network"].get("ethernets")
    if not isinstance(ethernets, dict):
        return text, []
    reasons = []
    for name, conf in ethernets.items():
        conf = conf if isinstance(conf, dict) else {}
        ethernets[name] = conf
        done = []
        for key in _NETPLAN_STATIC_KEYS:
            if key in conf:
                del conf[key]
                done.append(key)
        if conf.get("dhcp4") is not True:
            conf["dhcp4"] = True
            done.append("dhcp4")
        if conf.get("set-name") is not None:
            del conf["set-name"]
            done.append("set-name")
        if conf.get("match") != {"name": NETPLAN_MATCH_NAME}:
            conf["match"] = {"name": NETPLAN_MATCH_NAME}
            done.append("match")
        if done:
            reasons.append("ethernet %s: DHCPv4 on any NIC (%s changed)" % (name, ", ".join(done)))
    if not reasons:
        return text, []
    return yaml.safe_dump(doc, default_flow_style=False, sort_keys=False), reasons


def plan_netplan(root):
    plan = []
    for guest, host in _files(root, "/etc/netplan", ("*.yaml", "*.yml")):
        text = _read(host)
        new, reasons = convert_netplan(text, guest)
        if new != text:
            plan.append(Change(guest, "rewrite", text, new, reasons))
    return plan


# ----------------------------------------------------------------------------------------------- ini-like


def _ini_sections(text):
    """Split a keyfile/.network file into [(section name or None, [lines])]."""
    sections = [[None, []]]
    for line in text.splitlines(True):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            sections.append([stripped[1:-1], [line]])
        else:
            sections[-1][1].append(line)
    return sections


def _key(line):
    stripped = line.strip()
    if not stripped or stripped[0] in "#;" or "=" not in stripped:
        return None
    return stripped.split("=", 1)[0].strip()


def _value(line):
    return line.split("=", 1)[1].strip()


def convert_nm_keyfile(text):
    """NetworkManager keyfile: ethernet profiles get ``method=auto``, lose static addresses, gateway,
    DNS and their interface-name/MAC binding. Other profile types are left alone."""
    sections = _ini_sections(text)
    conn_type = None
    for name, lines in sections:
        if name == "connection":
            for line in lines:
                if _key(line) == "type":
                    conn_type = _value(line)
    if conn_type not in ("ethernet", "802-3-ethernet"):
        return text, []
    reasons = []
    out = []
    for name, lines in sections:
        new_lines = []
        for line in lines:
            key = _key(line)
            if name == "connection" and key == "interface-name":
                reasons.append("interface-name binding removed")
                continue
            if name in ("ethernet", "802-3-ethernet") and key in ("mac-address", "cloned-mac-address"):
                reasons.append("%s binding removed" % key)
                continue
            if name == "ipv4" and key is not None:
                if key == "method":
                    if _value(line) != "auto":
                        reasons.append("ipv4 method %s -> auto" % _value(line))
                        new_lines.append("method=auto\n")
                        continue
                elif re.match(r"^(address|addresses|gateway|dns|dns-search|routes?)\d*$", key):
                    reasons.append("ipv4 %s removed" % key)
                    continue
            new_lines.append(line)
        out.extend(new_lines)
    new = "".join(out)
    return new, reasons


def plan_nm_keyfiles(root):
    plan = []
    for guest, host in _files(root, "/etc/NetworkManager/system-connections"):
        text = _read(host)
        new, reasons = convert_nm_keyfile(text)
        if new != text:
            plan.append(Change(guest, "rewrite", text, new, reasons))
    return plan


def convert_networkd(text):
    """systemd-networkd ``.network``: a unit matching an Ethernet NIC by name or MAC matches any
    Ethernet NIC and uses DHCPv4 instead of static addresses."""
    sections = _ini_sections(text)
    match_lines = [line for name, lines in sections if name == "Match" for line in lines if _key(line)]
    names = [v for line in match_lines if _key(line) == "Name" for v in _value(line).split()]
    by_mac = any(_key(line) in ("MACAddress", "PermanentMACAddress") for line in match_lines)
    if not by_mac and not (names and all(ETHERNET_NAME.match(n) or n.startswith(("en", "eth")) for n in names)):
        return text, []
    reasons = []
    out = []
    has_dhcp = False
    for name, lines in sections:
        if name in ("Address", "Route"):
            reasons.append("[%s] section removed" % name)
            continue
        new_lines = []
        for line in lines:
            key = _key(line)
            if name == "Match" and key in ("MACAddress", "PermanentMACAddress"):
                reasons.append("Match %s removed" % key)
                continue
            if name == "Match" and key == "Name":
                if _value(line) != NETWORKD_MATCH_NAMES:
                    reasons.append("Match Name=%s -> %s" % (_value(line), NETWORKD_MATCH_NAMES))
                    new_lines.append("Name=%s\n" % NETWORKD_MATCH_NAMES)
                    continue
            if name == "Network" and key in ("Address", "Gateway", "DNS"):
                reasons.append("static %s removed" % key)
                continue
            if name == "Network" and key == "DHCP":
                has_dhcp = True
                if _value(line) not in ("yes", "ipv4", "true"):
                    reasons.append("DHCP=%s -> ipv4" % _value(line))
                    new_lines.append("DHCP=ipv4\n")
                    continue
            new_lines.append(line)
        if name == "Match" and not any(_key(line) == "Name" for line in new_lines):
            new_lines.append("Name=%s\n" % NETWORKD_MATCH_NAMES)
            reasons.append("Match Name=%s added" % NETWORKD_MATCH_NAMES)
        if name == "Network" and not has_dhcp:
            new_lines.append("DHCP=ipv4\n")
            has_dhcp = True
            reasons.append("DHCP=ipv4 added")
        out.append((name, new_lines))
    if not any(name == "Network" for name, _lines in out):
        out.append(("Network", ["\n", "[Network]\n", "DHCP=ipv4\n"]))
        reasons.append("[Network] DHCP=ipv4 added")
    new = "".join(line for _name, lines in out for line in lines)
    return new, reasons


def _link_pins_mac(text):
    sections = _ini_sections(text)
    return any(
        name == "Match" and _key(line) in ("MACAddress", "PermanentMACAddress")
        for name, lines in sections
        for line in lines
    )


def plan_networkd(root):
    plan = []
    for guest, host in _files(root, "/etc/systemd/network", ("*.network",)):
        text = _read(host)
        new, reasons = convert_networkd(text)
        if new != text:
            plan.append(Change(guest, "rewrite", text, new, reasons))
    for guest, host in _files(root, "/etc/systemd/network", ("*.link",)):
        text = _read(host)
        if _link_pins_mac(text):
            plan.append(Change(guest, "remove", text, None, ["MAC-pinned .link file removed"]))
    return plan


# ----------------------------------------------------------------------------------------------- ifcfg

_IFCFG_STATIC = re.compile(r"^(IPADDR|PREFIX|NETMASK|GATEWAY|DNS|BROADCAST|NETWORK)\d*$")
_IFCFG_PIN = ("HWADDR", "MACADDR", "DEVICE")


def convert_ifcfg(text):
    """ifcfg-rh: an Ethernet profile gets BOOTPROTO=dhcp and loses static addresses, DNS and its
    DEVICE/HWADDR binding (NetworkManager then applies it to any Ethernet NIC)."""
    values = {}
    for line in text.splitlines():
        key = _key(line)
        if key:
            values[key] = _value(line).strip("\"'")
    if values.get("TYPE", "Ethernet") != "Ethernet" or values.get("DEVICE") == "lo":
        return text, []
    reasons = []
    out = []
    seen_proto = False
    for line in text.splitlines(True):
        key = _key(line)
        if key and _IFCFG_STATIC.match(key):
            reasons.append("%s removed" % key)
            continue
        if key in _IFCFG_PIN:
            reasons.append("%s binding removed" % key)
            continue
        if key == "BOOTPROTO":
            seen_proto = True
            if _value(line).strip("\"'") != "dhcp":
                reasons.append("BOOTPROTO=%s -> dhcp" % _value(line).strip("\"'"))
                out.append("BOOTPROTO=dhcp\n")
                continue
        out.append(line)
    if not seen_proto:
        out.append("BOOTPROTO=dhcp\n")
        reasons.append("BOOTPROTO=dhcp added")
    new = "".join(out)
    if new != text and not new.endswith("\n"):
        new += "\n"
    return new, reasons


def plan_ifcfg(root):
    plan = []
    for guest, host in _files(root, "/etc/sysconfig/network-scripts", ("ifcfg-*",)):
        if guest.endswith("ifcfg-lo") or ".bak" in guest or guest.endswith("~"):
            continue
        text = _read(host)
        new, reasons = convert_ifcfg(text)
        if new != text:
            plan.append(Change(guest, "rewrite", text, new, reasons))
    return plan


# ----------------------------------------------------------------------------------------------- udev


def plan_udev(root):
    plan = []
    for rel_dir in ("/etc/udev/rules.d",):
        for guest, host in _files(root, rel_dir, ("*persistent-net*.rules",)):
            plan.append(Change(guest, "remove", _read(host), None, ["persistent-net udev rule pins NIC names to MACs"]))
    return plan


# ----------------------------------------------------------------------------------------------- all

SYSTEMS = (
    ("ifupdown", plan_ifupdown),
    ("netplan", plan_netplan),
    ("networkmanager", plan_nm_keyfiles),
    ("ifcfg", plan_ifcfg),
    ("networkd", plan_networkd),
    ("udev", plan_udev),
)


def plan_network(root="/"):
    """The complete plan for a root directory: (list of Change, list of system names found)."""
    plan = []
    for _name, planner in SYSTEMS:
        plan.extend(planner(root))
    return plan


def _atomic_write(path, text, mode_from=None):
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".esxi2ami-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(text)
        if mode_from and os.path.exists(mode_from):
            shutil.copystat(mode_from, tmp)
            st = os.stat(mode_from)
            os.chown(tmp, st.st_uid, st.st_gid)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def backup_path(root, backup_dir, guest_path):
    return os.path.join(_join(root, backup_dir), guest_path.lstrip("/"))


def apply_plan(plan, root="/", backup_dir="/var/backups/esxi2ami"):
    """Write the plan. The first original of every touched file is kept under ``backup_dir`` (a
    later run never overwrites it). Returns the list of backup paths (guest paths)."""
    backups = []
    for change in plan:
        if change.action == "keep":
            continue
        host = _join(root, change.path)
        backup = backup_path(root, backup_dir, change.path)
        if not os.path.exists(backup):
            os.makedirs(os.path.dirname(backup), mode=0o700, exist_ok=True)
            shutil.copy2(host, backup)
        backups.append(os.path.join(backup_dir, change.path.lstrip("/")))
        if change.action == "remove":
            os.unlink(host)
        else:
            _atomic_write(host, change.after, mode_from=host)
    return backups
