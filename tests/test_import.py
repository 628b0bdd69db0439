def test_import():
    import glocal

    assert glocal.__version__
