"""The local page over a bundle (``blastscan view``): the server and its endpoints
(:mod:`~blastscan.view.server`), what the page shows beside a cell (:mod:`~blastscan.view.detail`), what it
refuses (:mod:`~blastscan.view.access`: token, paths, sizes) and the page itself (``static/``, package data)."""
