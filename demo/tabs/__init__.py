"""The demo's tabs, one module each: its layout (`layout(page) -> Tab`), its handlers as plain functions
(`handlers(models) -> {name: fn}`), and its label. `demo.ui.TABS` lists them in page order."""
