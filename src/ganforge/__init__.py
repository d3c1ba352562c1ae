"""ganforge: GAN training pipelines (MLP GAN, DCGAN, WGAN-GP, WaveGAN) for Kubeflow Pipelines."""

__version__ = "0.1.0"
