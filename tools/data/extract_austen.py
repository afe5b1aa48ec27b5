#!/usr/bin/env python3
"""Extract the six Jane Austen novels from Debian's r-cran-janeaustenr package, without R.

    extract_austen.py PKG_ROOT OUT_DIR

PKG_ROOT is the tree `dpkg -x r-cran-janeaustenr_*.deb PKG_ROOT` made. The package keeps its data
as an R lazy-load database (`janeaustenr/data/Rdata.rdx` + `Rdata.rdb`); `.rda`/`.rds` files are
read too, should a later release ship those instead. Each novel is an R character vector, one
element per line of the Project Gutenberg text. This file holds a small reader for R's
serialization format (XDR binary, version 2 or 3), enough for those vectors.

Writes OUT_DIR/{sense_and_sensibility,pride_and_prejudice,mansfield_park,emma,northanger_abbey,
persuasion}.txt (lines joined with "\\n", ending in "\\n", UTF-8) and all.txt (the six in that
order, a blank line between two books), and prints line and character counts.
"""
import bz2
import glob
import gzip
import lzma
import os
import struct
import sys
import zlib

# R object name in the package -> output name, in the order of the package's austen_books().
BOOKS = [
    ("sensesensibility", "sense_and_sensibility"),
    ("prideprejudice", "pride_and_prejudice"),
    ("mansfieldpark", "mansfield_park"),
    ("emma", "emma"),
    ("northangerabbey", "northanger_abbey"),
    ("persuasion", "persuasion"),
]


def fail(msg):
    print(f"extract_austen: ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


# ------------------------------------------------------------------------ R serialization reader
class RObj:
    """An R value: `value` (list, str, ints, ...) and `attrs` (dict name -> RObj)."""

    def __init__(self, rtype, value, attrs=None):
        self.rtype, self.value, self.attrs = rtype, value, attrs or {}

    def names(self):
        n = self.attrs.get("names")
        return list(n.value) if n is not None else None

    def __repr__(self):
        return f"RObj(type={self.rtype}, len={len(self.value) if hasattr(self.value, '__len__') else '-'})"


NILVALUE, GLOBALENV, UNBOUNDVALUE, MISSINGARG, BASENAMESPACE = 254, 253, 252, 251, 250
NAMESPACESXP, PACKAGESXP, PERSISTSXP, EMPTYENV, BASEENV = 249, 248, 247, 242, 241
ATTRLANGSXP, ATTRLISTSXP, ALTREP, REFSXP = 240, 239, 238, 255
SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP, CHARSXP = 1, 2, 3, 4, 5, 6, 9
LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP, DOTSXP, VECSXP, EXPRSXP, RAWSXP = (
    10, 13, 14, 15, 16, 17, 19, 20, 24)
NA_INT = -(1 << 31)


class RReader:
    def __init__(self, data):
        self.d, self.p, self.refs = data, 0, []
        fmt = self.d[:2]
        if fmt != b"X\n":
            fail(f"unsupported R serialization format {fmt!r} (only XDR 'X\\n' is read)")
        self.p = 2
        version, _writer, _minreader = self.int(), self.int(), self.int()
        if version == 3:
            self.bytes(self.int())  # native encoding name
        elif version != 2:
            fail(f"unsupported R serialization version {version}")

    def bytes(self, n):
        b = self.d[self.p:self.p + n]
        if len(b) != n:
            fail("truncated R serialization stream")
        self.p += n
        return b

    def int(self):
        return struct.unpack(">i", self.bytes(4))[0]

    def length(self):
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        levels = flags >> 12
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))

        if t in (NILVALUE, GLOBALENV, UNBOUNDVALUE, MISSINGARG, BASENAMESPACE, EMPTYENV, BASEENV):
            return None if t == NILVALUE else RObj(t, None)
        if t == REFSXP:
            idx = flags >> 8
            if idx == 0:
                idx = self.int()
            return self.refs[idx - 1]
        if t in (PERSISTSXP, NAMESPACESXP, PACKAGESXP):
            if self.int() != 0:
                fail("bad string vector in serialization")
            obj = RObj(t, [self.item().value for _ in range(self.int())])
            if t != PERSISTSXP:
                self.refs.append(obj)
            return obj
        if t == SYMSXP:
            obj = RObj(t, self.item().value)
            self.refs.append(obj)
            return obj
        if t == ENVSXP:
            obj = RObj(t, None)
            self.int()  # locked
            self.refs.append(obj)
            obj.value = dict(enclos=self.item(), frame=self.item(), hashtab=self.item())
            attr = self.item()
            obj.attrs = self.attr_dict(attr)
            return obj
        if t in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP):
            # pairlist, read iteratively along the cdr chain: [(tag, value), ...]
            cells, attrs = [], None
            while True:
                attr = self.item() if (has_attr or t in (ATTRLANGSXP, ATTRLISTSXP)) else None
                if attrs is None:
                    attrs = attr
                tag = self.item() if has_tag else None
                car = self.item()
                cells.append((tag.value if tag is not None else None, car))
                nflags = self.int()
                nt = nflags & 0xFF
                if nt not in (LISTSXP, LANGSXP, DOTSXP, ATTRLISTSXP, ATTRLANGSXP):
                    self.p -= 4
                    self.item()  # the cdr terminator (normally NILVALUE)
                    break
                t, has_attr, has_tag = nt, bool(nflags & (1 << 9)), bool(nflags & (1 << 10))
            return RObj(LISTSXP, cells, self.attr_dict(attrs))
        if t == CHARSXP:
            n = self.int()
            if n == -1:
                return RObj(t, None)  # NA_character_
            raw = self.bytes(n)
            enc = "latin-1" if levels & (1 << 2) else "utf-8"
            try:
                return RObj(t, raw.decode(enc))
            except UnicodeDecodeError:
                return RObj(t, raw.decode("latin-1"))
        if t == ALTREP:
            info, state, attr = self.item(), self.item(), self.item()
            obj = self.altrep(info, state)
            obj.attrs = self.attr_dict(attr)
            return obj

        if t in (LGLSXP, INTSXP):
            n = self.length()
            obj = RObj(t, list(struct.unpack(f">{n}i", self.bytes(4 * n))))
        elif t == REALSXP:
            n = self.length()
            obj = RObj(t, list(struct.unpack(f">{n}d", self.bytes(8 * n))))
        elif t == CPLXSXP:
            n = self.length()
            v = struct.unpack(f">{2 * n}d", self.bytes(16 * n))
            obj = RObj(t, [complex(v[i], v[i + 1]) for i in range(0, 2 * n, 2)])
        elif t == STRSXP:
            n = self.length()
            obj = RObj(t, [self.item().value for _ in range(n)])
        elif t in (VECSXP, EXPRSXP):
            n = self.length()
            obj = RObj(t, [self.item() for _ in range(n)])
        elif t == RAWSXP:
            obj = RObj(t, self.bytes(self.length()))
        else:
            fail(f"R serialization type {t} is not supported by this reader")
        if has_attr:
            obj.attrs = self.attr_dict(self.item())
        return obj

    def altrep(self, info, state):
        cls = info.value[0][1].value if info is not None else "?"
        if cls == "compact_intseq":
            n, n1, inc = state.value[:3]
            return RObj(INTSXP, [int(n1 + i * inc) for i in range(int(n))])
        if cls == "compact_realseq":
            n, n1, inc = state.value[:3]
            return RObj(REALSXP, [n1 + i * inc for i in range(int(n))])
        if cls == "deferred_string":
            arg = state.value[0][1]
            return RObj(STRSXP, [None if x == NA_INT else str(x) for x in arg.value])
        if cls.startswith("wrap_"):
            inner = state.value[0]
            return RObj(inner.rtype, inner.value, inner.attrs)
        fail(f"R ALTREP class {cls!r} is not supported by this reader")

    @staticmethod
    def attr_dict(pairlist):
        if pairlist is None:
            return {}
        return {tag: val for tag, val in pairlist.value}


def unserialize(data):
    return RReader(data).item()


def decompress_any(data):
    """gzip / bzip2 / xz / uncompressed, by magic bytes (as R's readRDS and load do)."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


# --------------------------------------------------------------------------------- data formats
def read_lazyload_db(base):
    """R lazy-load database: BASE.rdx (a gzip'd serialized index) and BASE.rdb (the blobs)."""
    with open(base + ".rdx", "rb") as f:
        index = unserialize(decompress_any(f.read()))
    fields = dict(zip(index.names(), index.value))
    variables = fields["variables"]
    compressed = fields.get("compressed")
    ctype = compressed.value[0] if compressed is not None else 1
    with open(base + ".rdb", "rb") as f:
        rdb = f.read()
    out = {}
    for name, pos in zip(variables.names(), variables.value):
        off, n = int(pos.value[0]), int(pos.value[1])
        blob = rdb[off:off + n]
        size = struct.unpack(">I", blob[:4])[0]
        if ctype in (True, 1):
            raw = zlib.decompress(blob[4:])
        elif ctype in (2, 3):
            kind, payload = blob[4:5], blob[5:]
            raw = {b"0": lambda b: b, b"1": zlib.decompress, b"2": bz2.decompress,
                   b"Z": lzma.decompress}[kind](payload)
        elif ctype in (0, False):
            raw = blob[4:]
        else:
            fail(f"unknown lazy-load compression {ctype!r}")
        if len(raw) != size:
            fail(f"{name}: blob decompressed to {len(raw)} bytes, header says {size}")
        out[name] = unserialize(raw)
    return out


def read_rda(path):
    """save() file: magic RDX2/RDX3 then a serialized pairlist name -> value."""
    with open(path, "rb") as f:
        data = decompress_any(f.read())
    if data[:5] not in (b"RDX2\n", b"RDX3\n"):
        fail(f"{path}: not an .rda file (magic {data[:5]!r})")
    return {tag: val for tag, val in unserialize(data[5:]).value}


def read_rds(path):
    with open(path, "rb") as f:
        return {os.path.basename(path)[:-4]: unserialize(decompress_any(f.read()))}


def find_objects(root):
    pkgs = glob.glob(os.path.join(root, "usr/lib/R/site-library/janeaustenr"))
    pkgs += glob.glob(os.path.join(root, "usr/lib/R/*/janeaustenr"))
    if not pkgs:
        fail(f"no janeaustenr R package under {root}")
    data_dir = os.path.join(pkgs[0], "data")
    objects, sources = {}, []
    for rdx in sorted(glob.glob(os.path.join(data_dir, "*.rdx"))):
        objects.update(read_lazyload_db(rdx[:-4]))
        sources.append(rdx[:-4] + ".rdb")
    for rda in sorted(glob.glob(os.path.join(data_dir, "*.rda")) +
                      glob.glob(os.path.join(data_dir, "*.RData"))):
        objects.update(read_rda(rda))
        sources.append(rda)
    if not objects:
        for rds in sorted(glob.glob(os.path.join(data_dir, "*.rds"))):
            objects.update(read_rds(rds))
            sources.append(rds)
    return objects, sources


# ------------------------------------------------------------------------------------------ main
def main():
    if len(sys.argv) != 3:
        fail("usage: extract_austen.py PKG_ROOT OUT_DIR")
    root, out_dir = sys.argv[1:]
    objects, sources = find_objects(root)
    print(f"extract_austen: read {len(objects)} R objects from "
          f"{', '.join(os.path.relpath(s, root) for s in sources)}")
    os.makedirs(out_dir, exist_ok=True)
    texts = []
    print(f"  {'book':24} {'lines':>7} {'chars':>9} {'bytes':>9}")
    for rname, fname in BOOKS:
        obj = objects.get(rname)
        if obj is None:
            fail(f"R object {rname!r} not found; the package has: {sorted(objects)}")
        if obj.rtype != STRSXP:
            fail(f"{rname} is R type {obj.rtype}, expected a character vector")
        lines = ["" if s is None else s for s in obj.value]
        text = "\n".join(lines) + "\n"
        texts.append(text)
        path = os.path.join(out_dir, fname + ".txt")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        nbytes = len(text.encode("utf-8"))
        print(f"  {fname:24} {len(lines):>7} {len(text):>9} {nbytes:>9}")
        if len(lines) < 1000:
            fail(f"{rname} has only {len(lines)} lines; the extraction looks wrong")
    all_text = "\n".join(texts)  # each book ends in "\n": one more makes the blank line
    with open(os.path.join(out_dir, "all.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write(all_text)
    print(f"  {'all':24} {all_text.count(chr(10)):>7} {len(all_text):>9} "
          f"{len(all_text.encode('utf-8')):>9}")


if __name__ == "__main__":
    main()
