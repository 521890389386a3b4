"""``mvi_ocr``: product codes read off parts with the PP-OCRv4 models of rapidocr-onnxruntime; see ``eval.py``."""
