"""Figures a person would rather look at than read."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402


def embedding_map(features: torch.Tensor, labels: torch.Tensor, classes: list[str], path: str, title: str, seed: int = 0) -> None:
    """A 2-D t-SNE map of the features, coloured by class, saved as PNG."""
    points = TSNE(n_components=2, init="pca", perplexity=min(30.0, max(2.0, len(features) / 4 - 1)), random_state=seed)
    xy = points.fit_transform(torch.nn.functional.normalize(features.float(), dim=1).numpy())
    figure, axes = plt.subplots(figsize=(7, 6), dpi=110)
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for index, name in enumerate(classes):
        chosen = (labels == index).numpy()
        axes.scatter(xy[chosen, 0], xy[chosen, 1], s=6, color=colours(index % colours.N), label=name)
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
