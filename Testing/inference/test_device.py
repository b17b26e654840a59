"""Where the engine computes in bf16 on the CPU."""


def test_bf16_is_native_only_where_the_cpu_has_it_and_onednn_is_not_capped_below_it(monkeypatch, tmp_path):
    import builtins

    from medseg_core.inference import device

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k))
    for var in ("MEDSEG_CPU_BF16", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)
    assert device.native_bf16_cpu()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # PyTorch and OpenVINO then run without bf16
    assert not device.native_bf16_cpu() and not device.use_bf16("cpu")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert device.native_bf16_cpu()
    monkeypatch.setenv("MEDSEG_CPU_BF16", "0")
    assert not device.native_bf16_cpu()
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    monkeypatch.delenv("MEDSEG_CPU_BF16")
    assert not device.native_bf16_cpu()
