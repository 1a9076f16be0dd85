() => document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && e.target.closest && e.target.closest('#beta-slider')) e.target.blur();
}, true)
