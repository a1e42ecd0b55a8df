"""Verda serverless containers: the API client and the backend the scaler drives."""
