"""Dataset modules (ds_*) and the signal pieces they share."""
