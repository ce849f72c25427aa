"""The IIS "IP security" list: the binary value of the metabase properties ``IPSecurity``
(connection control) and ``RelayIpList`` (relay restrictions) of an SMTP virtual server.

Pure: bytes in, an ``IpSecList`` out (and back, for tests and for round trips).

The layout is IIS's ADDRESS_CHECK storage (rdns.hxx of the IIS sources, and the relay list
Microsoft's tools write; the metabase reference calls the type IPSECLIST). All numbers are
little-endian DWORDs; a "self-relative index" is an offset from the start of the value
with bit 31 set::

    ADDRESS_CHECK_LIST  iDenyAddr, iGrantAddr, iDenyName, iGrantName  (4 indexes)
                        dwFlags (1 = RDNS_FLAG_DODNS2IPCHECK), cRefSize
    ADDRESS_HEADER      cEntries, cAddresses, then cEntries ADDRESS_LIST_ENTRY
    ADDRESS_LIST_ENTRY  iFamily (2 = AF_INET), cAddresses (the mask counts as one),
                        cFullBytes, LastByte (the mask as bytes), iFirstAddress
                        -> the mask, then cAddresses - 1 addresses of 4 bytes
    NAME_HEADER         cEntries, cNames, then cEntries NAME_LIST_ENTRY
    NAME_LIST_ENTRY     cComponents (bit 31: DNSLIST_FLAG_NOSUBDOMAIN), cNames,
                        cNames indexes -> NUL-terminated names

What it means (the IIS "Connection" and "Relay restrictions" dialogs): entries in the
grant lists make "Only the list below" (everything else is refused); entries in the deny
lists make "All except the list below". A value without any entry grants everybody; a
property that is absent (None here) is "Only the list below" with an empty list for
RelayIpList (nobody relays) and "no restriction" for IPSecurity.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

AF_INET = 2
_REF = 0x80000000
_NOSUBDOMAIN = 0x80000000
_HEADER = struct.Struct("<6I")
_PAIR = struct.Struct("<2I")
_ADDR_ENTRY = struct.Struct("<5I")


class IpSecError(ValueError):
    """The value is not a well-formed IP security list; the text says where it breaks."""


@dataclass(frozen=True)
class NameEntry:
    """A domain entry: the host ``name`` and, unless ``exact``, every host below it."""

    name: str
    exact: bool = False


@dataclass
class IpSecList:
    grant_networks: list[IPv4Network] = field(default_factory=list)
    deny_networks: list[IPv4Network] = field(default_factory=list)
    grant_names: list[NameEntry] = field(default_factory=list)
    deny_names: list[NameEntry] = field(default_factory=list)
    flags: int = 1

    @property
    def grant_by_default(self) -> bool:
        """"All except the list below": true unless something is in a grant list."""
        return not (self.grant_networks or self.grant_names)

    @property
    def empty(self) -> bool:
        return not (self.grant_networks or self.deny_networks or self.grant_names
                    or self.deny_names)


def _offset(value: int, what: str, size: int, need: int) -> int:
    if not value & _REF:
        raise IpSecError(f"{what}: {value:#010x} is not a self-relative index (bit 31 unset)")
    offset = value & ~_REF
    if offset + need > size:
        raise IpSecError(f"truncated: {what} points at byte {offset}, the value has {size} bytes")
    return offset


def _mask_prefix(mask: bytes, what: str) -> int:
    bits = int.from_bytes(mask, "big")
    prefix = bin(bits).count("1")
    if bits != ((1 << 32) - 1) ^ ((1 << (32 - prefix)) - 1):
        raise IpSecError(f"{what}: mask {IPv4Address(mask)} is not contiguous")
    return prefix


def _addresses(data: bytes, index: int, what: str) -> list[IPv4Network]:
    size = len(data)
    at = _offset(index, what, size, _PAIR.size)
    entries, total = _PAIR.unpack_from(data, at)
    at += _PAIR.size
    out: list[IPv4Network] = []
    for number in range(entries):
        where = f"{what} entry {number}"
        if at + _ADDR_ENTRY.size > size:
            raise IpSecError(f"truncated: {where} ends after byte {size}")
        family, count, _full, _last, first = _ADDR_ENTRY.unpack_from(data, at)
        at += _ADDR_ENTRY.size
        if family != AF_INET:
            raise IpSecError(f"{where}: address family {family} is not AF_INET (2)")
        if count < 1:
            raise IpSecError(f"{where}: no mask (cAddresses = 0)")
        start = _offset(first, where, size, 4 * count)
        mask = data[start:start + 4]
        prefix = _mask_prefix(mask, where)
        for k in range(1, count):
            raw = data[start + 4 * k:start + 4 * k + 4]
            try:
                out.append(IPv4Network((IPv4Address(raw), prefix)))
            except ValueError:
                raise IpSecError(f"{where}: {IPv4Address(raw)} has bits outside the mask "
                                 f"{IPv4Address(mask)}") from None
    if len(out) != total:
        raise IpSecError(f"{what}: the header counts {total} addresses, the entries hold {len(out)}")
    return out


def _names(data: bytes, index: int, what: str) -> list[NameEntry]:
    size = len(data)
    at = _offset(index, what, size, _PAIR.size)
    entries, total = _PAIR.unpack_from(data, at)
    at += _PAIR.size
    out: list[NameEntry] = []
    for number in range(entries):
        where = f"{what} entry {number}"
        if at + _PAIR.size > size:
            raise IpSecError(f"truncated: {where} ends after byte {size}")
        components, count = _PAIR.unpack_from(data, at)
        at += _PAIR.size
        if at + 4 * count > size:
            raise IpSecError(f"truncated: {where} lists {count} names past byte {size}")
        for k in range(count):
            (ref,) = struct.unpack_from("<I", data, at)
            at += 4
            start = _offset(ref, f"{where} name {k}", size, 1)
            end = data.find(b"\0", start)
            if end < 0:
                raise IpSecError(f"truncated: {where} name {k} has no terminating NUL")
            try:
                name = data[start:end].decode("ascii").strip().lower()
            except UnicodeDecodeError:
                raise IpSecError(f"{where} name {k} is not ASCII") from None
            if not name:
                raise IpSecError(f"{where} name {k} is empty")
            out.append(NameEntry(name, exact=bool(components & _NOSUBDOMAIN)))
    if len(out) != total:
        raise IpSecError(f"{what}: the header counts {total} names, the entries hold {len(out)}")
    return out


def decode(data: bytes) -> IpSecList:
    """Parse the binary value; raises IpSecError naming the part that is wrong."""
    if len(data) < _HEADER.size:
        raise IpSecError(f"truncated: {len(data)} bytes, the header alone has {_HEADER.size}")
    deny_addr, grant_addr, deny_name, grant_name, flags, ref_size = _HEADER.unpack_from(data)
    if ref_size > len(data):
        raise IpSecError(f"truncated: the header says {ref_size} bytes of references, "
                         f"the value has {len(data)}")
    return IpSecList(
        deny_networks=_addresses(data, deny_addr, "deny address list"),
        grant_networks=_addresses(data, grant_addr, "grant address list"),
        deny_names=_names(data, deny_name, "deny name list"),
        grant_names=_names(data, grant_name, "grant name list"),
        flags=flags,
    )


def encode(value: IpSecList) -> bytes:
    """The binary value IIS stores for ``value`` (one list entry per mask, as IIS groups
    them). Used to build test fixtures and by anyone writing the metabase back."""
    def address_block(networks: list[IPv4Network]) -> list[tuple[int, list[IPv4Network]]]:
        groups: dict[int, list[IPv4Network]] = {}
        for net in networks:
            groups.setdefault(net.prefixlen, []).append(net)
        return sorted(groups.items(), key=lambda item: -item[0])

    def name_block(names: list[NameEntry]) -> list[tuple[int, list[NameEntry]]]:
        groups: dict[int, list[NameEntry]] = {}
        for entry in names:
            key = entry.name.count(".") + 1 | (_NOSUBDOMAIN if entry.exact else 0)
            groups.setdefault(key, []).append(entry)
        return list(groups.items())

    lists = [address_block(value.deny_networks), address_block(value.grant_networks)]
    names = [name_block(value.deny_names), name_block(value.grant_names)]
    # Reference area: header, address headers with entries, name headers with entries.
    at = _HEADER.size
    heads = []
    for block in lists:
        heads.append(at)
        at += _PAIR.size + _ADDR_ENTRY.size * len(block)
    for name_list in names:
        heads.append(at)
        at += _PAIR.size + sum(_PAIR.size + 4 * len(entries) for _, entries in name_list)
    ref_size = at
    out = bytearray(ref_size)
    _HEADER.pack_into(out, 0, *(h | _REF for h in heads), value.flags, ref_size)
    for head, block, networks in zip(heads[:2], lists, (value.deny_networks, value.grant_networks)):
        _PAIR.pack_into(out, head, len(block), len(networks))
        entry_at = head + _PAIR.size
        for prefix, group in block:
            mask = IPv4Network((0, prefix)).netmask.packed
            first = len(out)
            out += mask + b"".join(net.network_address.packed for net in group)
            _ADDR_ENTRY.pack_into(out, entry_at, AF_INET, len(group) + 1, prefix // 8,
                                  mask[prefix // 8] if prefix < 32 else 0, first | _REF)
            entry_at += _ADDR_ENTRY.size
    for head, name_list, entries in zip(heads[2:], names, (value.deny_names, value.grant_names)):
        _PAIR.pack_into(out, head, len(name_list), len(entries))
        entry_at = head + _PAIR.size
        for key, name_group in name_list:
            _PAIR.pack_into(out, entry_at, key, len(name_group))
            entry_at += _PAIR.size
            for entry in name_group:
                struct.pack_into("<I", out, entry_at, len(out) | _REF)
                entry_at += 4
                out += entry.name.encode("ascii") + b"\0"
    return bytes(out)
