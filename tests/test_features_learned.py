"""SuperPoint, ALIKED and DISK extractors, and how their weights are found and checked.

Model tests use the weights in ../shared/models (next to the repository) and skip when
they or torch are absent. No test touches the network.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='torch is not installed (pip install "vladsearch[torch]")')
F = torch.nn.functional

from vladsearch.features import get_extractor
from vladsearch.features import weights as weights_mod
from vladsearch.features.weights import WeightsError, git_blob_sha1, resolve_weights, sha256_file

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
SUPERPOINT_FILE = MODELS / "superpoint_magicleap_v1_reconstructed" / "superpoint_v1_reconstructed.pth"
needs_models = pytest.mark.skipif(not MODELS.is_dir(), reason=f"pretrained weights not found in {MODELS}")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph, grayscale uint8 240×320."""
    cv2 = pytest.importorskip("cv2")
    data = pytest.importorskip("skimage.data")
    gray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (320, 240), interpolation=cv2.INTER_AREA)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to download fails the test; weights lookups see only what a test sets up."""
    def refuse(*args, **kwargs):
        pytest.fail("a test tried to reach the network")
    monkeypatch.setattr(weights_mod.urllib.request, "urlopen", refuse)
    monkeypatch.delenv(weights_mod.ENV_DIR, raising=False)
    monkeypatch.delenv(weights_mod.ENV_OFFLINE, raising=False)


# --- SuperPoint against an independent implementation of the Magic Leap reference ----------------------

def reference_superpoint(state: dict, image: np.ndarray, radius=4, threshold=0.005, border=4):
    """Magic Leap's demo, written plainly: functional convs, numpy softmax/NMS, demo-style sampling."""
    def conv(x, name):
        weight = state[name + ".weight"]
        return F.conv2d(x, weight, state[name + ".bias"], padding=weight.shape[-1] // 2)

    x = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]
    with torch.no_grad():
        for i, block in enumerate("1234"):
            x = F.max_pool2d(x, 2) if i else x
            x = F.relu(conv(F.relu(conv(x, f"conv{block}a")), f"conv{block}b"))
        semi = conv(F.relu(conv(x, "convPa")), "convPb")[0].numpy()
        coarse = F.normalize(conv(F.relu(conv(x, "convDa")), "convDb"), dim=1)
    h, w = image.shape
    dense = np.exp(semi - semi.max(axis=0))
    dense /= dense.sum(axis=0)
    hc, wc = h // 8, w // 8
    heat = dense[:-1].transpose(1, 2, 0).reshape(hc, wc, 8, 8).transpose(0, 2, 1, 3).reshape(hc * 8, wc * 8)
    ys, xs = np.where(heat >= threshold)
    # nms_fast: visit candidates strongest first; a candidate still standing is kept and clears its box.
    order = np.argsort(-heat[ys, xs])
    grid = np.zeros((h + 2 * radius, w + 2 * radius), int)
    grid[ys + radius, xs + radius] = 1
    kept = []
    for x0, y0 in zip(xs[order], ys[order]):
        if grid[y0 + radius, x0 + radius] == 1:
            grid[y0:y0 + 2 * radius + 1, x0:x0 + 2 * radius + 1] = 0
            grid[y0 + radius, x0 + radius] = -1
            kept.append((x0, y0))
    pts = np.array(kept, np.float64).reshape(-1, 2)
    inside = (pts[:, 0] >= border) & (pts[:, 0] < w - border) & (pts[:, 1] >= border) & (pts[:, 1] < h - border)
    pts = pts[inside]
    samples = torch.from_numpy(np.stack([pts[:, 0] / (w / 2) - 1, pts[:, 1] / (h / 2) - 1], 1).astype(np.float32))
    desc = F.grid_sample(coarse, samples[None, None], align_corners=True)[0, :, 0].t()
    return pts, F.normalize(desc, dim=1).numpy()


@needs_models
def test_superpoint_weights_load_strictly():
    from vladsearch.features.superpoint import build_superpoint_net
    state = torch.load(SUPERPOINT_FILE, map_location="cpu", weights_only=True)
    result = build_superpoint_net().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@needs_models
def test_superpoint_matches_magic_leap_reference(photo):
    state = torch.load(SUPERPOINT_FILE, map_location="cpu", weights_only=True)
    ref_points, ref_desc = reference_superpoint(state, photo)
    features = get_extractor("superpoint", weights=SUPERPOINT_FILE, device="cpu", max_keypoints=100_000).extract(photo)
    assert len(features) == len(ref_points) > 100
    distance = np.linalg.norm(features.keypoints[:, None] - ref_points[None], axis=2)
    nearest = distance.argmin(axis=1)
    assert distance.min(axis=1).max() <= 1.0
    assert len(set(nearest)) == len(nearest)  # one-to-one
    cosine = (features.descriptors * ref_desc[nearest]).sum(axis=1)
    assert cosine.min() > 0.99
    assert features.descriptors.shape[1] == 256 and features.descriptors.dtype == np.float32


@needs_models
def test_superpoint_cap_batches_and_pickles(photo):
    from vladsearch.features.superpoint import SuperPoint
    sp = SuperPoint(max_keypoints=50, weights=SUPERPOINT_FILE, device="cpu")
    small = photo[:200, :296]
    single = [sp.extract(image) for image in (photo, small)]
    batch = sp.extract_batch([photo, small, photo])
    assert [len(f) for f in batch] == [50, 50, 50]
    for one, many in zip(single + single[:1], batch):
        np.testing.assert_allclose(one.keypoints, many.keypoints)
        np.testing.assert_allclose(one.descriptors, many.descriptors, atol=1e-5)
    assert np.all(np.diff(batch[0].scores) <= 0)  # strongest first
    assert sp.runs_in_main_process
    clone = pickle.loads(pickle.dumps(sp))
    assert clone._net is None
    assert sp.extract(np.zeros((8, 8), np.uint8)).descriptors.shape == (0, 256)  # below the network's size
    assert sp.extract(np.full((64, 80), 128, np.uint8)).descriptors.shape == (0, 256)  # flat: nothing to detect
    config = sp.config()
    assert config["weights_sha256"] == sha256_file(SUPERPOINT_FILE) == sp.weights_sha256
    assert config["name"] == "superpoint" and config["nms_radius"] == 4


# --- ALIKED's deformable convolution -----------------------------------------------------------------

def naive_deform_conv2d(x, offset, weight, padding, mask=None):
    """Loop-by-loop deformable convolution with torchvision's conventions (slow; tiny inputs only)."""
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    out_h, out_w = offset.shape[-2:]
    out = torch.zeros(b, o, out_h, out_w, dtype=torch.float64)
    xd = x.double()

    def bilinear(img, y, xx):
        if y <= -1 or y >= h or xx <= -1 or xx >= w:
            return torch.zeros(c, dtype=torch.float64)
        y0, x0 = int(np.floor(y)), int(np.floor(xx))
        total = torch.zeros(c, dtype=torch.float64)
        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            for xq, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
                if 0 <= yy < h and 0 <= xq < w:
                    total += wy * wx * img[:, yy, xq]
        return total

    for n in range(b):
        for i in range(out_h):
            for j in range(out_w):
                for a in range(kh):
                    for k in range(kw):
                        tap = a * kw + k
                        y = i - padding + a + float(offset[n, 2 * tap, i, j])
                        xx = j - padding + k + float(offset[n, 2 * tap + 1, i, j])
                        value = bilinear(xd[n], y, xx)
                        if mask is not None:
                            value = value * float(mask[n, tap, i, j])
                        out[n, :, i, j] += weight[:, :, a, k].double() @ value
    return out


def test_deform_conv_with_zero_offsets_is_conv2d():
    from vladsearch.features.aliked import deform_conv2d
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 13, 17, generator=gen)
    weight = torch.randn(7, 5, 3, 3, generator=gen)
    bias = torch.randn(7, generator=gen)
    offset = torch.zeros(2, 18, 13, 17)
    expected = F.conv2d(x, weight, bias, padding=1)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, bias, padding=1), expected, atol=1e-4, rtol=1e-4)


def test_deform_conv_matches_naive_loops_with_offsets_and_mask():
    from vladsearch.features.aliked import deform_conv2d
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 6, 7, generator=gen)
    weight = torch.randn(4, 3, 3, 3, generator=gen)
    offset = 2.5 * torch.randn(1, 18, 6, 7, generator=gen)  # reaches outside the map, too
    mask = torch.rand(1, 9, 6, 7, generator=gen)
    expected = naive_deform_conv2d(x, offset, weight, padding=1, mask=mask).float()
    torch.testing.assert_close(deform_conv2d(x, offset, weight, None, padding=1, mask=mask), expected,
                               atol=1e-4, rtol=1e-4)


# --- ALIKED and DISK on a photograph ---------------------------------------------------------------------

def check_features(features, dim, image):
    h, w = image.shape
    assert len(features) > 50
    assert features.descriptors.shape == (len(features), dim) and features.descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-4)
    assert np.all(features.keypoints >= 0) and np.all(features.keypoints <= [w - 1, h - 1])
    assert np.all(np.isfinite(features.scores))


@needs_models
@pytest.mark.parametrize("model, dim", [("n16", 128), ("t16", 64), ("n32", 128), ("n16rot", 128)])
def test_aliked_variants(photo, model, dim):
    path = MODELS / "aliked" / f"aliked-{model}.pth"
    extractor = get_extractor("aliked", model=model, weights=path, device="cpu", max_keypoints=300)
    features = extractor.extract(photo)
    check_features(features, dim, photo)
    assert len(features) <= 300
    config = extractor.config()
    assert config["model"] == f"aliked-{model}" and config["weights_sha256"] == sha256_file(path)
    assert weights_mod.is_official(f"aliked-{model}", path)


@needs_models
def test_disk_on_photo(photo):
    path = MODELS / "disk" / "disk-depth-save.pth"
    extractor = get_extractor("disk", weights=path, device="cpu", max_keypoints=500)
    features = extractor.extract(photo[:230, :310])  # not a multiple of 16: padded inside
    check_features(features, 128, photo[:230, :310])
    assert len(features) <= 500
    assert extractor.config()["weights_sha256"] == weights_mod.WEIGHTS["disk"].sha256


def test_unknown_aliked_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match="n16, t16, n16rot, n32"):
        get_extractor("aliked", model="n64")


# --- bad weights files ---------------------------------------------------------------------------------

@needs_models
@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_damaged_weights_give_weights_error(tmp_path, damage):
    from vladsearch.features.superpoint import SuperPoint
    data = SUPERPOINT_FILE.read_bytes()
    bad = tmp_path / "superpoint_v1.pth"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsError, match="truncated or corrupt") as info:
        SuperPoint(weights=bad, device="cpu").load()
    assert str(bad) in str(info.value) and "--weights" in str(info.value)
    assert isinstance(info.value, ValueError)


@needs_models
def test_weights_of_another_model_give_weights_error():
    from vladsearch.features.superpoint import SuperPoint
    with pytest.raises(WeightsError, match="does not match the superpoint network"):
        SuperPoint(weights=MODELS / "aliked" / "aliked-n16.pth", device="cpu").load()


# --- where weights come from ---------------------------------------------------------------------------

def test_resolve_order_explicit_then_env_then_cache(tmp_path, monkeypatch):
    env_dir, cache_root, explicit = tmp_path / "env", tmp_path / "xdg", tmp_path / "mine.pth"
    (cache_root / "vladsearch").mkdir(parents=True)
    env_dir.mkdir()
    for path in (env_dir / "superpoint_v1.pth", cache_root / "vladsearch" / "superpoint_v1.pth", explicit):
        path.write_bytes(b"x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_root))
    monkeypatch.setenv("VLADSEARCH_WEIGHTS_DIR", str(env_dir))
    assert resolve_weights("superpoint", explicit) == explicit
    assert resolve_weights("superpoint") == env_dir / "superpoint_v1.pth"
    (env_dir / "superpoint_v1.pth").unlink()
    assert resolve_weights("superpoint") == cache_root / "vladsearch" / "superpoint_v1.pth"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights_mod.cache_dir() == tmp_path / "home" / ".cache" / "vladsearch"


def test_resolve_finds_files_one_folder_down(tmp_path, monkeypatch):
    (tmp_path / "aliked").mkdir()
    (tmp_path / "aliked" / "aliked-n32.pth").write_bytes(b"x")
    monkeypatch.setenv("VLADSEARCH_WEIGHTS_DIR", str(tmp_path))
    assert resolve_weights("aliked-n32") == tmp_path / "aliked" / "aliked-n32.pth"


def test_missing_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("VLADSEARCH_OFFLINE", "1")
    with pytest.raises(WeightsError, match="weights for superpoint not found: pass --weights PATH or set "
                                           "VLADSEARCH_WEIGHTS_DIR") as info:
        resolve_weights("superpoint")
    assert "magicleap/SuperPointPretrainedNetwork" in str(info.value)
    with pytest.raises(WeightsError, match="not found at"):
        resolve_weights("disk", tmp_path / "nope.pth")


def test_download_is_verified_and_never_lands_unverified(tmp_path, monkeypatch):
    import io

    monkeypatch.setattr(weights_mod.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not weights"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="fail verification"):
        resolve_weights("disk")
    assert list((tmp_path / "vladsearch").iterdir()) == []


def test_git_blob_sha1_matches_git(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    assert git_blob_sha1(path) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object hello.txt`
    assert sha256_file(path) == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
