from spermhead.cli import app

app(prog_name="spermhead")
