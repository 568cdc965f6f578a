"""NeuroEdge trainer: the paper's DSConv-CBAM and its baselines, data, training, evaluation.

Keras 3 only (``keras`` / ``keras.ops``), so the same code runs on the TensorFlow backend
on a CPU workstation and on the JAX backend on a GPU machine. Heavy imports (Keras,
matplotlib) happen inside the functions that need them; ``import trainer`` is cheap.
"""

__version__ = "0.1.0"
