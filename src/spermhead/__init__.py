"""spermhead: WHO sperm-head morphology classification."""
__version__ = "0.1.0"
