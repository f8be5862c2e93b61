"""The seed paper is cited where a reader looks first, and the kit says how to cite it."""
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOI = "10.5137/1019-5149.JTN.29217-20.2"
TITLE = "Utilizing Deep Convolutional Generative Adversarial Networks for Automatic"


def test_citation_cff_names_the_kit_and_the_papers():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and cff["authors"]
    refs = {r["title"].split(":")[0].strip(): r for r in cff["references"]}
    seed = cff["references"][0]
    assert seed["doi"] == DOI and seed["journal"] == "Turkish Neurosurgery" and seed["year"] == 2022
    assert any("f-AnoGAN" in t for t in refs) and any("Deep Convolutional" in t for t in refs)
    assert any("arXiv:1703.05921" in str(r.get("identifiers")) for r in cff["references"])  # AnoGAN


def test_readme_opens_with_the_full_reference():
    head = (ROOT / "README.md").read_text()[:800]
    assert DOI in head and "Turkish Neurosurgery" in head and "2022" in head


def test_notebook_01_opens_with_the_full_reference():
    first = json.loads((ROOT / "notebooks" / "01_data_prep.ipynb").read_text())["cells"][0]
    text = "".join(first["source"])
    assert DOI in text and TITLE in " ".join(text.replace("\n> ", " ").split())
