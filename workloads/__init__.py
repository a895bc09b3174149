"""The science in plain PyTorch: data, augmentation, models, losses, methods, pretext tasks, the bank's
math, training loops, evaluation. Imports torch, torchvision, kornia, pyarrow; never Ray, Optuna or MLflow."""
