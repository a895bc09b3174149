"""Which losses each kind of bank negatives serves (torch-free, so configs validate without torch)."""

NEGATIVES = {
    "exact": ("info_nce",),
    "sampled": ("info_nce", "npair"),
    "hardest": ("info_nce", "npair", "triplet", "contrastive", "lifted_structured"),
}
