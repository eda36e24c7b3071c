"""``raysl curate``: near-duplicate removal and balanced selection of unlabeled images.

- :mod:`raysl.curate.dedup`: exact and near duplicates, two blocks of rows at a time.
- :mod:`raysl.curate.hierarchy`: hierarchical k-means with resampling and hierarchical
  balanced sampling (Vo et al. 2024), over rows it reaches block by block.
- :mod:`raysl.curate.report`: the counts and the picture.
- :mod:`raysl.curate.command`: the stages put together with Ray.
"""

# The cosine at or above which ``raysl curate`` calls two images near duplicates (see
# CurateSettings.near for the measurement behind it); here so the CLI reads it without Ray.
NEAR_DEFAULT = 0.9995
