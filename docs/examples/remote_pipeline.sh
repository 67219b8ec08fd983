l2 remote submit digits_cnn.pt --calibration calib.pt --calibration-spec '{"kind": "tensors"}' \
    --arch digits_cnn --target-ratio 10 --options '{"rounds": 0}' \
    --wait --timeout 3600 --download digits_cnn.l2 --json > job.json
case $? in
  0) echo "compressed $(jq -r .job.true_ratio job.json)x: $(jq -r .download job.json)" ;;
  1) echo "compression failed: $(jq -r .job.error job.json)"; exit 1 ;;
  *) echo "the service refused or could not be reached; see above"; exit 2 ;;
esac
l2 remote layers "$(jq -r .job.id job.json)"   # per-layer table; every command takes --json
