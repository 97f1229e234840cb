"""Model modules (mdl_*) and the layers they share."""
