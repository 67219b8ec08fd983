from l2_client import Client

client = Client()  # L2_URL and L2_API_KEY, or Client("https://l2.example.com", api_key="l2_...")
checkpoint = client.upload_checkpoint("digits_cnn.pt")  # above 64 MiB: resumable, survives a dropped connection
calibration = client.upload_dataset("calib.pt", spec={"kind": "tensors"})
job = client.submit(checkpoint, calibration, target_ratio=10, architecture="digits_cnn", options={"rounds": 0})
job.wait(timeout=3600)  # progress bar with phase and ETA; raises JobFailed if the job fails
job.download("digits_cnn.l2")  # resumes with Range and verifies the SHA-256
print(f"{job.info.true_ratio:.1f}x", [(layer.name, layer.bit_width) for layer in job.layers()][:2])
