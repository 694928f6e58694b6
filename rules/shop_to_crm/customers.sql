-- Shop customers become CRM customers.
--   mapping:    id 42            -> customer_no 'C00000042'
--   cleaning:   empty industry   -> 'Other'; e-mail trimmed and lower-cased
--   format:     phone keeps only digits and '+'
--   filter:     blocked customers are not in the CRM (and leave it when blocked)
INSERT INTO crm_customer (customer_no, full_name, email, phone, industry, since)
SELECT CONCAT('C', LPAD(CAST(c.id AS CHAR), 8, '0')),
       TRIM(CONCAT(c.last_name, c.first_name)),
       LOWER(TRIM(c.email)),
       REGEXP_REPLACE(c.phone, '[^0-9+]', ''),
       COALESCE(NULLIF(TRIM(c.industry), ''), 'Other'),
       DATE(c.created_at)
FROM customers AS c
WHERE c.status = 'active';
