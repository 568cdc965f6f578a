"""NeuroEdge device side: manifest, preprocessing, TFLite runtime and the watch-folder agent.

Nothing in this package may import TensorFlow, Keras, ``trainer`` or ``converters``:
it runs on a Raspberry Pi or a Jetson Nano with only the ``edge`` extra installed.
"""

__version__ = "0.1.0"
