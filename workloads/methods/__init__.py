"""Methods that compose a backbone, a head and a loss: the contrastive learner, MoCo's key encoder,
the bank objective. Imports losses, models, bank, distributed."""
