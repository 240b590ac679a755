"""Serving a trained model: the bundle format (`bundle`), batch prediction (`predictor`),
the FastAPI app and its pages (`app`, `static/`), Grad-CAM (`gradcam`) and ONNX export
(`onnx_export`). Modules are imported on use, so `import spermhead.serving` stays light."""
