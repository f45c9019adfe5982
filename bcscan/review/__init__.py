"""`bcscan review`: a pathologist verifies the model's cell calls of one output folder in a browser.

`store` keeps every decision and sign-off in OUT_DIR/review.sqlite; `publish` puts the signed-off
counts into patients.csv and the PDFs; `app` is the local web application over both.
"""
