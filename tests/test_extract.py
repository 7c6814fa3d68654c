import numpy as np
import pytest
import torch
from conftest import require_data
from PIL import Image

from deepret.errors import DeepretError
from deepret.extract import Extraction, ExtractSettings, extract, plan_batches
from deepret.imageio import ImageSource, image_size, open_rgb, target_shape, to_tensor
from deepret.models import create_model, l2n


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("resnet18-gem", weights="random")


@pytest.fixture
def photos():
    return sorted(require_data("oxford5k-mini", "jpg").glob("*.jpg"))[:6]


def test_target_shape_keeps_the_longest_side_and_rounds_the_other():
    assert target_shape(1024, 768, 512) == (384, 512)
    assert target_shape(768, 1024, 512) == (512, 384)
    assert target_shape(1000, 700, 512, round_to=32) == (352, 512)


def test_plan_batches_groups_equal_shapes_within_a_pixel_budget():
    sizes = [(1024, 768)] * 5 + [(768, 1024)] * 2 + [(1000, 300)]
    batches = plan_batches(sizes, longest=512, round_to=32, max_pixels=3 * 512 * 384)
    assert sorted(len(b) for b in batches) == [1, 2, 2, 3]
    for batch in batches:
        assert len({(h, w) for _, h, w in batch}) == 1
    assert sorted(i for b in batches for i, _, _ in b) == list(range(8))
    fixed = plan_batches(sizes, longest=512, round_to=32, max_pixels=10**9, fixed=224)
    assert len(fixed) == 1 and fixed[0][0][1:] == (224, 224)


def test_without_upscaling_a_small_image_keeps_its_size_at_every_scale(net, tmp_path):
    sizes = [(1024, 768), (300, 200)]
    def shapes(**kw):
        return sorted({(i, h, w) for b in plan_batches(sizes, 512, 32, 10**9, **kw) for i, h, w in b})

    assert shapes() == [(0, 384, 512), (1, 352, 512)]  # enlarged to the longest side 512
    assert shapes(upscale=False) == [(0, 384, 512), (1, 192, 300)]  # cirtorch's thumbnail: shrink only
    assert shapes(upscale=False, scale=2.0) == [(0, 768, 1024), (1, 384, 600)]  # then scaled, as cirtorch does
    photo = sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))[0]
    with Image.open(photo) as im:
        im.convert("RGB").resize((300, 225)).save(tmp_path / "small.jpg", quality=95)
    small = [tmp_path / "small.jpg"]
    native = extract(net, small, settings=ExtractSettings(size=300, precision="fp32"), progress=False).vectors
    kept = extract(net, small, settings=ExtractSettings(size=512, upscale=False, precision="fp32"),
                   progress=False).vectors
    enlarged = extract(net, small, settings=ExtractSettings(size=512, upscale=True, precision="fp32"),
                       progress=False).vectors
    default = extract(net, small, settings=ExtractSettings(size=512, precision="fp32"), progress=False).vectors
    np.testing.assert_array_equal(kept, native)
    np.testing.assert_array_equal(default, native)  # keeping sizes is the default
    assert not np.allclose(enlarged, native, atol=1e-4)
    assert ExtractSettings(upscale=True).to_dict() != ExtractSettings().to_dict()  # part of the cache key


def test_batched_extraction_equals_one_image_per_forward(net, photos):
    settings = ExtractSettings(size=256)
    batched = extract(net, photos, settings=settings, workers=2, progress=False).vectors
    single = extract(net, photos, settings=settings, workers=0, max_batch_pixels=1, progress=False).vectors
    assert batched.shape == (6, 512) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1, atol=1e-5)


def _by_hand(net, path, size, flip=False):
    h, w = target_shape(*image_size(path), size, 32)
    im = open_rgb(path, draft_to=(w, h))  # the JPEG decoder may scale down by 2^k, as extract lets it
    x = to_tensor(im, (h, w), net.meta["input"]["mean"], net.meta["input"]["std"])[None]
    with torch.no_grad():
        v = net(x)
        return l2n(v + net(x.flip(-1))) if flip else v


def test_multiscale_is_the_gem_power_mean_of_the_scales(net, photos):
    got = extract(net, photos[:2], settings=ExtractSettings(size=256, scales=(1.0, 0.5), precision="fp32"), workers=0,
                  progress=False).vectors  # fp32, as by hand (auto may mean bf16 on this CPU)
    p = net.gem_p()
    for i, path in enumerate(photos[:2]):
        v = (_by_hand(net, path, 256).double().pow(p) + _by_hand(net, path, 128).double().pow(p)) / 2
        np.testing.assert_allclose(got[i], l2n(v.pow(1 / p))[0].numpy(), atol=1e-5)


def test_flip_averages_the_mirrored_image(net, photos):
    got = extract(net, photos[:1], settings=ExtractSettings(size=192, flip=True, precision="fp32"), workers=0,
                  progress=False).vectors
    np.testing.assert_allclose(got[0], _by_hand(net, photos[0], 192, flip=True)[0].numpy(), atol=1e-5)
    plain = extract(net, photos[:1], settings=ExtractSettings(size=192, precision="fp32"), workers=0,
                    progress=False).vectors
    assert not np.allclose(got, plain, atol=1e-3)


def test_query_bbx_crops_before_resizing(net, photos, tmp_path):
    bbx = (100.5, 50, 400, 300)
    crop = tmp_path / "crop.png"
    Image.open(photos[0]).convert("RGB").crop((100, 50, 400, 300)).save(crop)
    with_bbx = extract(net, photos[:1], [bbx], settings=ExtractSettings(size=160), workers=0,
                       progress=False).vectors
    cropped = extract(net, [crop], settings=ExtractSettings(size=160), workers=0, progress=False).vectors
    np.testing.assert_allclose(with_bbx, cropped, atol=1e-5)


def test_fc7_networks_see_224_pixel_squares():
    torch.manual_seed(0)
    net = create_model("alexnet-fc7", weights="random")
    sizes = [(1024, 768), (300, 900)]
    assert {(h, w) for b in plan_batches(sizes, 1024, 32, 10**9, fixed=net.input_size) for _, h, w in b} == {(224, 224)}


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_and_truncated_images_name_the_file(net, photos, tmp_path, workers):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DeepretError, match="garbage.jpg"):
        extract(net, [photos[0], garbage], workers=workers, progress=False)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photos[1].read_bytes()[:5000])
    with pytest.raises(DeepretError, match="truncated.jpg") as err:
        extract(net, [photos[0], truncated], settings=ExtractSettings(size=128), workers=workers, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(DeepretError, match="missing.jpg"):
        extract(net, [tmp_path / "missing.jpg"], workers=workers, progress=False)


def _bench_with_separate_queries(root, n_db=4, n_q=3):
    """A small revisitop benchmark whose queries are files of their own (not database images)."""
    import pickle

    from deepret.datasets import load_benchmark

    src = sorted(require_data("oxford5k-mini", "jpg").glob("*.jpg"))
    jpg = root / "sep" / "jpg"
    jpg.mkdir(parents=True)
    names = [f"db{i}" for i in range(n_db)] + [f"q{i}" for i in range(n_q)]
    for name, photo in zip(names, src):
        with Image.open(photo) as im:
            im.convert("RGB").resize((160, 120)).save(jpg / f"{name}.jpg", quality=90)
    gnd = [{"bbx": [5.0, 5.0, 150.0, 110.0], "ok": [0, 1], "junk": []} for _ in range(n_q)]
    (root / "sep" / "gnd_sep.pkl").write_bytes(pickle.dumps({"imlist": names[:n_db], "qimlist": names[n_db:], "gnd": gnd}))
    return load_benchmark("sep", root, check_images=False), jpg


def test_broken_database_and_query_images_are_named_in_one_error_before_any_forward_pass(net, tmp_path, monkeypatch):
    import deepret.pipeline
    from deepret.pipeline import RunOptions, benchmark_features

    bench, jpg = _bench_with_separate_queries(tmp_path)
    (jpg / "db1.jpg").write_bytes(b"\xff\xd8 not a photo")            # database: corrupt header
    Image.new("L", (400, 400)).save(jpg / "q0.jpg", format="PNG")     # query: over the (lowered) pixel limit
    (jpg / "q2.jpg").unlink()                                         # query: missing

    def no_forward_pass(*args, **kwargs):
        raise AssertionError("extraction started although images are broken")

    monkeypatch.setattr(deepret.pipeline, "extract", no_forward_pass)
    opts = RunOptions(ExtractSettings(size=64), use_cache=False, workers=0, progress=False, max_pixels=100_000)
    with pytest.raises(DeepretError) as err:
        benchmark_features(net, bench, opts)
    text = str(err.value)
    assert "\n" not in text and text.startswith("3 of 7 images of sep (database and queries) cannot be used: ")
    for name, reason in (("db1.jpg", "is corrupt"), ("q0.jpg", "has 400x400 = 0.16 Mpx, above the limit of 0.1 Mpx"),
                         ("q2.jpg", "not found")):
        assert f"{jpg / name} {reason}" in text, (name, text)
    # what to do, once per kind, said of one image ("it") or of several ("them")
    assert text.endswith(": replace or remove it; or raise --max-pixels if you trust it; "
                         "or check the dataset root or run `deepret download`")

    # many broken images: a readable first line with the count, then every one of them on its own line
    for name in ("db0", "db2", "db3"):
        (jpg / f"{name}.jpg").write_bytes(b"GIF89a broken")
    with pytest.raises(DeepretError) as err:
        benchmark_features(net, bench, opts)
    first, *rest = str(err.value).splitlines()
    assert first.startswith("6 of 7 images of sep (database and queries) cannot be used "
                            "(db0.jpg, db1.jpg, db2.jpg and 3 more, each with its reason below): replace or remove them")
    assert len(first) < 300
    assert sorted(line.split()[0] for line in rest) == sorted(str(jpg / f"{n}.jpg")
                                                             for n in ("db0", "db1", "db2", "db3", "q0", "q2"))


def test_images_broken_past_their_header_are_named_together_after_extraction(net, tmp_path):
    from deepret.pipeline import RunOptions, benchmark_features

    bench, jpg = _bench_with_separate_queries(tmp_path)
    for name in ("db2", "q1"):  # the header reads, the pixels do not
        data = (jpg / f"{name}.jpg").read_bytes()
        (jpg / f"{name}.jpg").write_bytes(data[:len(data) // 3])
    cache = tmp_path / "cache"
    with pytest.raises(DeepretError) as err:
        benchmark_features(net, bench, RunOptions(ExtractSettings(size=64), cache_dir=cache, workers=0, progress=False))
    text = str(err.value)
    assert "\n" not in text and text.startswith("2 of 7 images of sep (database and queries) cannot be used: ")
    assert str(jpg / "db2.jpg") in text and str(jpg / "q1.jpg") in text
    assert not list(cache.rglob("*.npz"))  # nothing cached


def test_pixel_limit_of_a_benchmark_run_is_a_parameter(net, tmp_path):
    from deepret.pipeline import RunOptions, benchmark_features

    bench, jpg = _bench_with_separate_queries(tmp_path, n_db=2, n_q=1)
    opts = RunOptions(ExtractSettings(size=64), use_cache=False, workers=0, progress=False, max_pixels=10_000)
    with pytest.raises(DeepretError, match=r"3 of 3 images .* above the limit of 0.01 Mpx"):
        benchmark_features(net, bench, opts)
    opts.max_pixels = 160 * 120
    features, _, _ = benchmark_features(net, bench, opts)
    assert features.db.shape == (2, net.dim) and features.queries.shape == (1, net.dim)


def _rotated_with_exif(photo, path, size=None):
    """`photo`'s pixels turned 90 degrees and tagged EXIF orientation 6: upright, it is the photo."""
    im = Image.open(photo).convert("RGB")
    if size is not None:
        im = im.resize(size)
    exif = Image.Exif()
    exif[0x0112] = 6
    im.transpose(Image.Transpose.ROTATE_90).save(path, quality=92, exif=exif)
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_pil_images_and_bytes_give_their_files_descriptors(net, photos, tmp_path, workers):
    rotated = _rotated_with_exif(photos[0], tmp_path / "rotated.jpg")
    png = tmp_path / "photo.png"
    Image.open(photos[1]).convert("RGB").save(png)
    paths = [photos[2], photos[3], rotated, png]
    boxes = [None, (30, 40.5, 300, 250), (10, 10, 200, 300), None]
    # multi-scale: the JPEG decoder scales down by a different power of two at each scale
    settings = ExtractSettings(size=240, scales=(1.0, 0.5), precision="fp32")
    common = dict(settings=settings, workers=workers, progress=False, upright=True)
    files = extract(net, paths, boxes, **common)
    opened = [Image.open(p) for p in paths]  # not decoded yet: decoded from their files' bytes
    as_bytes = [p.read_bytes() for p in paths]
    loaded = Image.open(png)
    loaded.load()  # decoded: used as its pixels (a PNG: the same pixels as its file)
    made = Image.open(png).convert("RGB")
    mixed = [opened[0], as_bytes[1], opened[2], made]
    for images in (opened, as_bytes, mixed):
        got = extract(net, images, boxes, **common)
        assert isinstance(got, Extraction) and got.failed == {}
        np.testing.assert_array_equal(got.vectors, files.vectors)
    np.testing.assert_array_equal(extract(net, [loaded], **common).vectors, extract(net, [png], **common).vectors)
    assert opened[1].size == Image.open(paths[1]).size  # the caller's image is left as it was


def test_a_loaded_image_is_turned_upright_by_its_own_exif(net, photos, tmp_path):
    rotated = _rotated_with_exif(photos[0], tmp_path / "rotated.jpg", size=(200, 150))  # too small to draft
    loaded = Image.open(rotated)
    loaded.load()
    assert loaded.size == (150, 200) and ImageSource([loaded], upright=True).size(0) == (200, 150)
    settings = ExtractSettings(size=192, precision="fp32")
    for upright in (True, False):
        got = extract(net, [loaded], settings=settings, workers=0, progress=False, upright=upright)
        np.testing.assert_array_equal(got.vectors, extract(net, [rotated], settings=settings, workers=0,
                                                           progress=False, upright=upright).vectors)
    upright, raw = (extract(net, [loaded], settings=settings, workers=0, progress=False, upright=u).vectors
                    for u in (True, False))
    assert not np.allclose(upright, raw, atol=1e-3)


def test_broken_in_memory_images_are_named_by_their_index(net, photos):
    big = Image.new("RGB", (1200, 1000))  # the photos have at most 1024 x 1024 pixels
    images = [photos[0], b"\xff\xd8 not a jpeg", big]
    got = extract(net, images, settings=ExtractSettings(size=64), workers=0, progress=False, on_error="skip",
                  max_pixels=1_100_000)
    assert sorted(got.failed) == [1, 2]
    assert "corrupt" in got.failed[1] and "above the limit" in got.failed[2]
    assert np.all(got.vectors[[1, 2]] == 0) and got.described().shape == (1, net.dim)
    with pytest.raises(DeepretError) as err:
        extract(net, images, settings=ExtractSettings(size=64), workers=0, progress=False, max_pixels=1_100_000)
    assert "#1 (in memory) is corrupt" in str(err.value) and "#2 (in memory) has 1200x1000" in str(err.value)
    source = ImageSource(images, max_pixels=1_100_000)
    with pytest.raises(ValueError, match="its own boxes"):
        extract(net, source, [None] * 3, progress=False)
    assert extract(net, source, settings=ExtractSettings(size=64), workers=0, progress=False,
                   on_error="skip").failed.keys() == {1, 2}
