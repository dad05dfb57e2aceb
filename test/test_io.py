"""Map files: bit-exact round trip, clear errors for truncated and foreign files, no pickle."""
import io as pyio
import json
import struct
import zipfile

import numpy as np
import pytest
import torch

from conftest import make_config
from voxmap_ros.core import io as mapio
from voxmap_ros.core.mapper import Mapper
from voxmap_ros.core.octree import AttributeSpec
from voxmap_ros.types import Frame

pytestmark = pytest.mark.usefixtures("single_thread")

VOXEL_M = 0.05


@pytest.fixture(scope="module")
def saved_map(indoor_data, tmp_path_factory):
    m = Mapper(make_config(VOXEL_M))
    for d, c, T in indoor_data.frames[:3]:
        m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    o = m.octree
    o.register_attribute(AttributeSpec("label", torch.int16, (), -1))
    o.register_attribute(AttributeSpec("feat", torch.float32, (4,), 0.5))
    s = o.alive_slots()
    o.attrs["label"][s] = torch.randint(-5, 100, o.attrs["label"][s].shape, dtype=torch.int16)
    o.attrs["feat"][s] = torch.randn(o.attrs["feat"][s].shape)
    # A pruned region too, so that free masks are part of the round trip.
    free = s[(o.attrs["tsdf"][s].float() >= 0.999).all(1)][:20]
    o.attrs["occ"][free] = m.params.l_min
    assert m.prune() > 0
    path = tmp_path_factory.mktemp("io") / "map.npz"
    m.save(path, frame_ids={"map": "world", "sensor": "camera"})
    return m, path


def _by_key(o):
    keys, ids = o.table.items()
    order = torch.argsort(keys)
    keys, ids = keys[order], ids[order].long()
    slots = o.node_brick[ids].long()
    out = {"keys": keys, "is_brick": slots >= 0}
    for f in ("node_max_occ", "node_min_abs_tsdf", "node_observed", "node_free_mask"):
        out[f] = getattr(o, f)[ids]
    bs = slots[slots >= 0]
    out["brick_coord"] = o.brick_coord[bs]
    for n, t in o.attrs.items():
        out[f"attr_{n}"] = t[bs]
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8) if t.dtype.is_floating_point else t


def test_round_trip_is_bit_exact(saved_map):
    m, path = saved_map
    loaded = Mapper.load(path)
    a, b = _by_key(m.octree), _by_key(loaded.octree)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(_bits(a[k]), _bits(b[k])), k
    assert bool((a["node_free_mask"] != 0).any())
    o, p = m.octree, loaded.octree
    assert (p.voxel_size_m, p.levels, p.free_logodds) == (o.voxel_size_m, o.levels, o.free_logodds)
    assert p.specs == o.specs
    assert loaded.config.to_dict() == m.config.to_dict()
    h = mapio.read_header(path)
    assert h["extra"]["frame_ids"] == {"map": "world", "sensor": "camera"}
    # The loaded map answers queries like the original, and keeps integrating.
    pts = torch.from_numpy(np.random.default_rng(0).uniform(-3, 3, (5000, 3)))
    for level in (0, 2):
        la, ka = o.occupancy_at(pts, level)
        lb, kb = p.occupancy_at(pts, level)
        assert torch.equal(la, lb) and torch.equal(ka, kb)
    assert len(loaded.extract_mesh().triangles) == len(m.extract_mesh().triangles)


def test_members_are_deflated_and_files_of_stored_members_still_load(saved_map, tmp_path):
    m, path = saved_map
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos)
        size = {i.filename: (i.compress_size, i.file_size) for i in infos}
        # Free space is one TSDF value and no colour over whole bricks: those members shrink most.
        for name in ("attr_tsdf.npy", "attr_color.npy"):
            assert size[name][0] < size[name][1] / 2, (name, size[name])
    stored = _stored_copy(path, tmp_path / "stored.npz")
    a, b = _by_key(m.octree), _by_key(Mapper.load(stored).octree)
    assert all(torch.equal(_bits(a[k]), _bits(b[k])) for k in a)


def test_an_array_header_claiming_another_shape_is_refused_before_its_data_is_read(saved_map, tmp_path):
    """A damaged .npy header that claims 2^40 voxels: refused from the header alone, naming the
    shape the map header expects (never an attempt to allocate what it claims)."""
    _, path = saved_map
    bad = tmp_path / "huge.npz"
    head = pyio.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f2", "fortran_order": False, "shape": (1 << 31, 512)})
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(bad, "w") as w:
        for i in z.infolist():
            w.writestr(i.filename, head.getvalue() + b"\0" * 64 if i.filename == "attr_tsdf.npy" else z.read(i.filename))
    msg = _expect_error(bad, "attr_tsdf", "expected")
    assert str(1 << 31) in msg


def test_no_pickle_in_the_file(saved_map):
    _, path = saved_map
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            arr = np.load(pyio.BytesIO(z.read(name)), allow_pickle=False)     # would raise on objects
            assert arr.dtype != object


def _expect_error(path, *words):
    with pytest.raises(ValueError) as info:
        Mapper.load(path)
    msg = str(info.value)
    assert str(path) in msg or path.name in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_truncated_files(saved_map, tmp_path):
    _, path = saved_map
    data = path.read_bytes()
    for cut in (1, 100, len(data) // 2, len(data) - 10):
        p = tmp_path / f"cut{cut}.npz"
        p.write_bytes(data[:-cut])
        _expect_error(p, "truncated")
    p = tmp_path / "empty.npz"
    p.write_bytes(b"")
    _expect_error(p, "truncated")


def test_corrupted_member(saved_map, tmp_path):
    _, path = saved_map
    # Flip bytes inside an array member (the zip structure stays readable).
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    bad = bytearray(members["attr_tsdf.npy"])
    bad[10:60] = b"\xff" * 50
    members["attr_tsdf.npy"] = bytes(bad)
    p = tmp_path / "corrupt.npz"
    with zipfile.ZipFile(p, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(ValueError):
        Mapper.load(p)


def _stored_copy(path, out):
    """The same archive with stored (uncompressed) members, as np.savez wrote map files before."""
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as w:
        for i in z.infolist():
            w.writestr(i.filename, z.read(i.filename))
    return out


@pytest.mark.parametrize("members", ["deflated", "stored"])
def test_a_flipped_byte_in_the_array_data_is_refused(saved_map, tmp_path, members):
    """One byte flipped in the middle of the tsdf array's data (not its header): the zip's CRC
    (or zlib) catches it, and loading says which member is damaged instead of returning a wrong map.
    Stored members: the loader streams each array, so it must read on to the member's end."""
    _, path = saved_map
    if members == "stored":
        path = _stored_copy(path, tmp_path / "stored.npz")
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("attr_tsdf.npy")
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    data_start = info.header_offset + 30 + name_len + extra_len
    raw[data_start + info.compress_size // 2] ^= 0x01
    p = tmp_path / "flipped.npz"
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="attr_tsdf"):
        Mapper.load(p)


def test_foreign_files(tmp_path):
    p = tmp_path / "random.npz"
    p.write_bytes(np.random.default_rng(0).bytes(5000))
    _expect_error(p, "not a voxmap map file")
    p = tmp_path / "other.npz"
    np.savez(p, a=np.arange(3), b=np.zeros((2, 2)))
    _expect_error(p, "header")
    p = tmp_path / "missing.npz"
    with pytest.raises(ValueError, match="does not exist"):
        Mapper.load(p)
    d = tmp_path / "a_dir.npz"
    d.mkdir()
    with pytest.raises(ValueError):
        Mapper.load(d)


def _read_header(path):
    with zipfile.ZipFile(path) as z:
        return json.loads(np.load(pyio.BytesIO(z.read("header.npy"))).tobytes().decode())


def _rewrite_header(src, dst, **changes):
    h = _read_header(src)
    h.update(changes)
    _write_header(src, dst, h)


def _write_header(src, dst, h):
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buf = pyio.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(h).encode(), np.uint8))
    members["header.npy"] = buf.getvalue()
    with zipfile.ZipFile(dst, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)


def test_wrong_version_format_and_shapes(saved_map, tmp_path):
    _, path = saved_map
    p = tmp_path / "v99.npz"
    _rewrite_header(path, p, version=99)
    _expect_error(p, "version 99")
    p = tmp_path / "fmt.npz"
    _rewrite_header(path, p, format="someone.else")
    _expect_error(p, "not a voxmap map")
    p = tmp_path / "count.npz"
    h = mapio.read_header(path)
    _rewrite_header(path, p, num_bricks=h["num_bricks"] + 1)
    _expect_error(p, "expected")
    p = tmp_path / "nofield.npz"
    _rewrite_header(path, p, num_nodes=None)
    _expect_error(p, "num_nodes")
    p = tmp_path / "badattr.npz"
    _rewrite_header(path, p, attributes=[{"name": "tsdf"}])
    _expect_error(p, "attribute")
    p = tmp_path / "json.npz"
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buf = pyio.BytesIO()
    np.save(buf, np.frombuffer(b"{not json", np.uint8))
    members["header.npy"] = buf.getvalue()
    with zipfile.ZipFile(p, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    _expect_error(p, "JSON")


class _Trap:
    """Unpickling this would run os.system: it must never happen."""
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.flag}",))


def test_pickled_arrays_are_refused(saved_map, tmp_path):
    _, path = saved_map
    flag = tmp_path / "pwned"
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    for target in ("header.npy", "node_key.npy"):
        buf = pyio.BytesIO()
        np.save(buf, np.array([_Trap(flag)], dtype=object), allow_pickle=True)
        m2 = dict(members)
        m2[target] = buf.getvalue()
        p = tmp_path / f"pickle_{target}.npz"
        with zipfile.ZipFile(p, "w") as z:
            for n, b in m2.items():
                z.writestr(n, b)
        with pytest.raises(ValueError):
            Mapper.load(p)
        assert not flag.exists()


def _rewrite_array(src, dst, name, fn):
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buf = pyio.BytesIO()
    np.save(buf, fn(np.load(pyio.BytesIO(members[name + ".npy"]))))
    members[name + ".npy"] = buf.getvalue()
    with zipfile.ZipFile(dst, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)


@pytest.mark.parametrize("case, fn, words", [
    ("reversed", lambda k: k[::-1].copy(), ("disagrees",)),
    ("duplicate", lambda k: np.concatenate([k[:1], k[:-1]]), ("duplicate",)),
    ("negative", lambda k: np.where(np.arange(k.size) == 0, -1, k), ("key layout",)),
])
def test_inconsistent_node_keys_are_refused(saved_map, tmp_path, case, fn, words):
    """Keys with valid dtype and shape but wrong contents would merge or misplace nodes silently."""
    _, path = saved_map
    p = tmp_path / f"keys_{case}.npz"
    _rewrite_array(path, p, "node_key", fn)
    _expect_error(p, *words)


def test_save_to_a_bad_path_says_so_and_leaves_nothing(saved_map, tmp_path):
    m, _ = saved_map
    with pytest.raises(ValueError, match="is a directory"):
        m.save(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        m.save(tmp_path / "no" / "such" / "map.npz")
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("dtype", [torch.int8, torch.float64, torch.int16, torch.bool, torch.int64])
def test_every_registrable_attribute_dtype_round_trips(tmp_path, dtype):
    """Once int8 / float64 attributes saved fine and then could not be loaded."""
    from voxmap_ros.core.octree import SparseVoxelOctree
    o = SparseVoxelOctree(0.05, 3, "cpu", initial_bricks=16)
    slots, _ = o.allocate_bricks(torch.tensor([[0, 0, 0], [1, 2, 3]]))
    o.register_attribute(AttributeSpec("extra", dtype, (2,), 1))
    o.attrs["extra"][slots[1], 7] = torch.tensor([0, 1]).to(dtype)
    o2, _ = mapio.load_octree(mapio.save_octree(o, tmp_path / "m.npz"))
    assert o2.attrs["extra"].dtype == dtype
    for c in ([0, 0, 0], [1, 2, 3]):
        a, b = o.lookup_bricks(torch.tensor([c])), o2.lookup_bricks(torch.tensor([c]))
        assert torch.equal(o.attrs["extra"][a], o2.attrs["extra"][b])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.uint16])
def test_attribute_dtypes_a_map_file_cannot_hold_are_refused_up_front(dtype):
    from voxmap_ros.core.octree import SparseVoxelOctree
    o = SparseVoxelOctree(0.05, 3, "cpu", initial_bricks=16)
    with pytest.raises(ValueError, match="is not one of"):
        o.register_attribute(AttributeSpec("extra", dtype))
    assert "extra" not in o.attrs and "extra" not in o.specs


def test_a_damaged_zip_version_field_is_a_value_error(saved_map, tmp_path):
    """zipfile raises NotImplementedError for an unknown 'version needed to extract'."""
    _, path = saved_map
    data = bytearray(path.read_bytes())
    data[data.index(b"PK\x01\x02") + 6] ^= 0xFF          # first central-directory entry
    p = tmp_path / "zipver.npz"
    p.write_bytes(bytes(data))
    _expect_error(p, "not a voxmap map file")


@pytest.mark.parametrize("header", [[1, 2], "voxmap", 3, None])
def test_a_header_that_is_not_a_json_object_is_refused(saved_map, tmp_path, header):
    p = tmp_path / "hdr.npz"
    _write_header(saved_map[1], p, header)
    _expect_error(p, "header is a JSON")


def _with_attribute(src, dst, change):
    h = _read_header(src)
    h["attributes"] = [change(a) for a in h["attributes"]]
    _write_header(src, dst, h)


@pytest.mark.parametrize("name, change, words", [
    ("fill_overflow", lambda a: {**a, "fill": 300} if a["name"] == "color" else a, ("fill 300", "uint8")),
    ("fill_negative_uint8", lambda a: {**a, "fill": -1} if a["name"] == "color" else a, ("fill -1",)),
    ("fill_fraction_int", lambda a: {**a, "fill": 0.5} if a["name"] == "label" else a, ("fill 0.5",)),
    ("huge_channels", lambda a: {**a, "channels": [1 << 28]} if a["name"] == "feat" else a, ("values per voxel",)),
])
def test_attribute_specs_a_map_cannot_hold_are_refused_before_allocating(saved_map, tmp_path, name, change, words):
    p = tmp_path / f"{name}.npz"
    _with_attribute(saved_map[1], p, change)
    _expect_error(p, *words)


def test_a_file_without_a_core_attribute_is_refused(saved_map, tmp_path):
    """Without 'occ' the octree would fill it with 0 (unknown) and the map would lose its occupancy."""
    _, path = saved_map
    h = _read_header(path)
    h["attributes"] = [a for a in h["attributes"] if a["name"] != "occ"]
    p = tmp_path / "no_occ.npz"
    _write_header(path, p, h)
    _expect_error(p, "core attribute 'occ' is missing")
    h = _read_header(path)
    h["attributes"] = [{**a, "dtype": "float32"} if a["name"] == "tsdf" else a for a in h["attributes"]]
    _write_header(path, p, h)
    _expect_error(p, "core attribute 'tsdf'")


def test_a_config_that_disagrees_with_the_octree_is_refused(saved_map, tmp_path):
    """extract_mesh scales by the octree's voxel size, update_mesh by the config's: they must agree."""
    _, path = saved_map
    h = _read_header(path)
    h["extra"]["config"]["map"]["voxel_size_m"] = 2 * VOXEL_M
    p = tmp_path / "voxel.npz"
    _write_header(path, p, h)
    _expect_error(p, "map.voxel_size_m", "corrupted")
