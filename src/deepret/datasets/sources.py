"""Where the built-in benchmarks come from: hosts, archive names and known sha256 checksums."""

from __future__ import annotations

from dataclasses import dataclass

OXFORD_IMAGES_URL = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/"
PARIS_IMAGES_URL = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/"
# The revisited ground truth is served by revisitop, the original protocol's pickles by cirtorch.
REVISITED_GND_URL = "http://cmp.felk.cvut.cz/revisitop/data/datasets/{name}/"
ORIGINAL_GND_URL = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/test/{name}/"


@dataclass(frozen=True)
class DatasetSource:
    """One downloadable benchmark: its image archives and its ground-truth pickle."""

    name: str
    title: str
    images_url: str
    archives: tuple[str, ...]
    shares_images_with: str  # the other benchmark built from the same archives

    @property
    def gnd_file(self) -> str:
        return f"gnd_{self.name}.pkl"

    @property
    def gnd_url(self) -> str:
        url = REVISITED_GND_URL if self.name.startswith("r") else ORIGINAL_GND_URL
        return url.format(name=self.name)

    def describe(self) -> str:
        """One line saying what `deepret download NAME` fetches."""
        return f"the {self.title} images ({', '.join(self.archives)}) and {self.gnd_file}"


_OXFORD = ("oxbuild_images-v1.tgz",)
_PARIS = ("paris_1-v1.tgz", "paris_2-v1.tgz")

BUILTIN_DATASETS: dict[str, DatasetSource] = {
    s.name: s
    for s in (
        DatasetSource("oxford5k", "Oxford5k", OXFORD_IMAGES_URL, _OXFORD, "roxford5k"),
        DatasetSource("roxford5k", "Revisited Oxford", OXFORD_IMAGES_URL, _OXFORD, "oxford5k"),
        DatasetSource("paris6k", "Paris6k", PARIS_IMAGES_URL, _PARIS, "rparis6k"),
        DatasetSource("rparis6k", "Revisited Paris", PARIS_IMAGES_URL, _PARIS, "paris6k"),
    )
}

# sha256 of the official files. The ground-truth pickles were hashed from the official copies in
# ../shared/data. No checksum of the image archives is known offline: None means "not verified";
# pass `checksums={"oxbuild_images-v1.tgz": "<sha256>"}` to download() to verify them too.
KNOWN_SHA256: dict[str, str | None] = {
    "gnd_oxford5k.pkl": "c84e5eb68524fd46aab5c0e80b90f970d7bf677507aeb8cddd6b12990d4bc19e",
    "gnd_paris6k.pkl": "def916cf4f197a182d9a7840cdb6294489fa57c2121f9742a1bcc6f2209bb345",
    "gnd_roxford5k.pkl": "ba7967754bd2d7d2210a5799f9c45ad5835e269a80ef9d3eba44caa35816c471",
    "gnd_rparis6k.pkl": "d2e729a5293dda7dda8a15c8383424a42e4964a2c4cfea2f32fa85d11d2df499",
    "oxbuild_images-v1.tgz": None,
    "paris_1-v1.tgz": None,
    "paris_2-v1.tgz": None,
}
