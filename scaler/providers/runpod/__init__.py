"""RunPod pods: the REST API v2 client and the backend the scaler drives."""
