"""Deploying tickets: R2S banks (`r2s`), tickets read from finished runs (`tickets`), the `.rst` artifact
(`artifact`, masks coded by `mask_codec`), SavedModel export (`export`) and serving (`serving`)."""
