"""NeuroEdge converters: a trained Keras model -> a TFLite model the device can trust.

``python -m converters.tflite --int8 --model RUN_DIR --data DATA_DIR --out OUT_DIR`` converts,
checks the converted model against the float one, and writes ``model.tflite`` with its
``model.json`` manifest only when it passes the accuracy gate. TensorFlow is imported only
inside this package (and only by the commands that need it); ``import converters`` is cheap.
"""

__version__ = "0.1.0"
