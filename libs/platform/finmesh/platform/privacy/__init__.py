"""Personal data kept out of logs, traces and stores: card-number detection and masking."""
