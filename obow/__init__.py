"""OBoW: Online Bag-of-Visual-Words self-supervised learning (Gidaris et al., CVPR 2021)."""

__version__ = "0.1.0"
