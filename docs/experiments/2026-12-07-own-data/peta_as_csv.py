"""PETA re-expressed as the `csv` dataset kind: a labels CSV (image path inside PETA.zip, person, the 35
evaluated attributes in PETA.mat's order) in the order the PETA parser reads the release, so that the
same split and the same training order follow from it.

    python peta_as_csv.py ../shared/datasets/PETA.zip ../shared/datasets/PETA.mat /tmp/petacsv/labels.csv
"""

import sys
import tempfile
from pathlib import Path

import pandas as pd

from lwpar.data import archive, parsers, peta

release, mat, out = map(Path, sys.argv[1:4])
members = archive.list_members(release)
listing = [m for m in members if Path(m).suffix.lower() in peta.IMAGE_SUFFIXES]
with tempfile.TemporaryDirectory() as tmp:  # the label files only; the images stay in the zip
    archive.extract_zip(release, Path(tmp), set(members) - set(listing))
    record = parsers.parse("peta", Path(tmp), mat, shown=release.name, listing=listing)
evaluated = record["evaluated"]
table = pd.DataFrame(record["labels"][:, [record["attributes"].index(a) for a in evaluated]], columns=evaluated)
table.insert(0, "person", record["persons"])
table.insert(0, "image", record["images"])
out.parent.mkdir(parents=True, exist_ok=True)
table.to_csv(out, index=False)
print(f"{out}: {len(table)} images, {table.person.nunique()} persons, {len(evaluated)} attributes")
